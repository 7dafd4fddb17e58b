"""Memory diagnostics on SIGUSR1, for memory work (docs/BENCHMARKS-scale.md, issue 19).

Off by default. ``KLOOP_MEMDUMP=1``: ``kill -USR1 <pid>`` writes to the operator's log (stderr)
VmRSS, CPython's small-object allocator statistics (``sys._debugmallocstats``: its arenas) and
glibc's per-arena totals (``malloc_stats``: the main heap and one arena per API thread that
allocated). ``KLOOP_TRACEMALLOC=N`` also traces Python allocations (N frames; costs CPU and
memory of its own) and adds the largest live allocation sites by file:line and by file;
``KLOOP_TRACEMALLOC_SNAPSHOT=PATH`` also writes each snapshot to ``PATH.<n>`` for
``tracemalloc.Snapshot.load`` (group it any way, offline).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import itertools
import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

TOP = 30
_dumps = itertools.count()


def install() -> None:
    """Install the SIGUSR1 dump (and start tracing) if the environment asks; a no-op otherwise."""
    frames = os.environ.get("KLOOP_TRACEMALLOC", "")
    if frames.isdigit() and int(frames) > 0:
        tracemalloc.start(int(frames))
    elif os.environ.get("KLOOP_MEMDUMP", "") in ("", "0"):
        return
    signal.signal(signal.SIGUSR1, _dump)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _malloc_stats() -> None:
    libc = ctypes.util.find_library("c")
    if libc is not None:
        ctypes.CDLL(libc).malloc_stats()  # glibc: per arena, to stderr


def _dump(signum: int, frame: FrameType | None) -> None:
    rss = _rss_mib()
    print(f"memdump: VmRSS {rss:.1f} MiB, gc counts {gc.get_count()}", file=sys.stderr, flush=True)
    sys._debugmallocstats()  # pymalloc's arenas and pools, to stderr
    _malloc_stats()
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
