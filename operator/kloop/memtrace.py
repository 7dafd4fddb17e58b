"""Memory diagnostics on SIGUSR1, for memory work (docs/BENCHMARKS-scale.md, issue 19).

Off by default. ``KLOOP_MEMDUMP=1``: ``kill -USR1 <pid>`` writes to the operator's log (stderr)
VmRSS, CPython's small-object allocator statistics (``sys._debugmallocstats``: its arenas) and
glibc's per-arena totals (``malloc_stats``: the main heap and one arena per API thread that
allocated). ``KLOOP_TRACEMALLOC=N`` also traces Python allocations (N frames; costs CPU and
memory of its own) and adds the largest live allocation sites by file:line and by file;
``KLOOP_MEMDUMP=deep`` adds the size of what kloop's long-lived holders reach (the watch
store's runs, Loops and pods, the triggers' Loops, the run and Loop tasks, kopf's per-object
memories, the metrics), each object counted once, in that order; the walk itself allocates,
so read the peak before the first deep dump. ``KLOOP_TRACEMALLOC_SNAPSHOT=PATH`` also writes
each snapshot to ``PATH.<n>`` for ``tracemalloc.Snapshot.load`` (group it any way, offline).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import signal
import sys
import threading
import tracemalloc
import types
from pathlib import Path
from types import FrameType

from kloop.malloc import libc_function

TOP = 30
_dumps = itertools.count()


def install() -> None:
    """Install the SIGUSR1 dump (and start tracing) if the environment asks; a no-op otherwise."""
    frames = os.environ.get("KLOOP_TRACEMALLOC", "")
    if frames.isdigit() and int(frames) > 0:
        tracemalloc.start(int(frames))
    elif os.environ.get("KLOOP_MEMDUMP", "").lower() not in ("1", "true", "yes", "deep"):
        return
    signal.signal(signal.SIGUSR1, _dump)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _malloc_stats() -> None:
    stats = libc_function("malloc_stats")  # glibc only
    if stats is not None:
        stats()  # per arena, to stderr


def _deep_size(root: object, seen: set[int]) -> int:
    """Bytes of ``root`` and what it reaches, minus ``seen``; modules, types, code stop it."""
    size, stack = 0, [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, STOP):
            continue
        seen.add(id(obj))
        size += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return size


STOP = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.CodeType,
    types.BuiltinFunctionType,
    asyncio.AbstractEventLoop,  # from a task: every other task, the executor, the sockets
    threading.Thread,
    logging.Logger,
)


def _holders() -> None:
    """Deep sizes of kloop's long-lived holders, found among the live objects by type name."""
    found: dict[str, list[object]] = {}
    wanted = {"Store", "Triggers", "ResourceMemories", "CollectorRegistry"}
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name in wanted:
            found.setdefault(name, []).append(obj)
    from kloop import handlers, loops  # noqa: PLC0415 - loaded by now; a diagnostic only
    from kloop.adapters import observe  # noqa: PLC0415

    roots: list[tuple[str, object]] = []
    for store in found.get("Store", []):
        roots += [
            ("store: LoopRuns", getattr(store, "runs", None)),
            ("store: Loops", getattr(store, "loops", None)),
            ("store: pods", getattr(store, "pods", None)),
        ]
    roots += [("triggers' Loops", getattr(t, "loops", None)) for t in found.get("Triggers", [])]
    roots += [
        ("parsed Loop specs", observe._parsed_specs),
        ("run tasks (their frames: snapshots, decisions)", handlers._drivers),
        ("Loop tasks", loops._loops),
        ("kopf per-object memories", found.get("ResourceMemories", [])),
        ("metrics", found.get("CollectorRegistry", [])),
    ]
    seen: set[int] = {id(roots), id(found), id(wanted)}
    lines = []
    for label, root in roots:
        lines.append(f"  {_deep_size(root, seen) / 2**20:8.1f} MiB  {label}")
    print("memdump: held by\n" + "\n".join(lines), file=sys.stderr, flush=True)


def _dump(signum: int, frame: FrameType | None) -> None:
    """Print the dump; a diagnostic that fails says so and never takes the operator down."""
    try:
        _dump_all()
    except Exception as err:  # noqa: BLE001 - raised in a signal handler it would end the loop
        print(f"memdump: failed: {err!r}", file=sys.stderr, flush=True)


def _dump_all() -> None:
    rss = _rss_mib()
    print(f"memdump: VmRSS {rss:.1f} MiB, gc counts {gc.get_count()}", file=sys.stderr, flush=True)
    sys._debugmallocstats()  # pymalloc's arenas and pools, to stderr
    _malloc_stats()
    if os.environ.get("KLOOP_MEMDUMP") == "deep":
        _holders()
    if not tracemalloc.is_tracing():
        return
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__),)
    )
    traced, peak = tracemalloc.get_traced_memory()
    path = os.environ.get("KLOOP_TRACEMALLOC_SNAPSHOT")
    if path:
        snapshot.dump(f"{path}.{next(_dumps)}")
    out = [f"tracemalloc: traced {traced / 2**20:.1f} MiB (peak {peak / 2**20:.1f})"]
    for key in ("lineno", "filename"):
        out.append(f"tracemalloc: top by {key}")
        for stat in snapshot.statistics(key)[:TOP]:
            out.append(f"  {stat.size / 2**20:8.2f} MiB {stat.count:9d}  {stat.traceback}")
    if tracemalloc.get_traceback_limit() > 1:
        out.append("tracemalloc: top tracebacks")
        for stat in snapshot.statistics("traceback")[:10]:
            out.append(f"  {stat.size / 2**20:8.2f} MiB {stat.count:9d}")
            out.extend(f"      {line}" for line in stat.traceback.format())
    print("\n".join(out), file=sys.stderr, flush=True)
