"""``KLOOP_TRACEMALLOC=N``: trace Python allocations (N frames); SIGUSR1 logs the largest.

A diagnostic switch for memory work (docs/BENCHMARKS-scale.md, issue 19): off by default, since
tracing costs CPU and memory of its own. ``kill -USR1 <pid>`` writes to the operator's log the
traced total beside VmRSS (the difference is what Python's allocator cannot see: the
interpreter's own arenas, C libraries, malloc's free lists) and the top allocation sites by
file:line and by file.
"""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

TOP = 30


def install() -> None:
    """Start tracing if the environment asks for it; a no-op otherwise."""
    frames = os.environ.get("KLOOP_TRACEMALLOC", "")
    if not frames or frames == "0":
        return
    tracemalloc.start(int(frames) if frames.isdigit() else 1)
    signal.signal(signal.SIGUSR1, _dump)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _dump(signum: int, frame: FrameType | None) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__),)
    )
    traced, peak = tracemalloc.get_traced_memory()
    out = [
        f"tracemalloc: traced {traced / 2**20:.1f} MiB (peak {peak / 2**20:.1f}), "
        f"VmRSS {_rss_mib():.1f} MiB"
    ]
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
