"""Where and when the numbers were taken: without this they cannot be compared."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
OUTPUT = ROOT / "docs" / "BENCHMARKS.md"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def commit() -> str:
    """Short HEAD, "+dirty" when the tree differs (the output file itself does not count)."""
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--", ".", f":!{OUTPUT.relative_to(ROOT)}")
    return head + ("+dirty" if dirty else "")


def command() -> str:
    argv = " ".join(sys.argv[1:])
    target = os.environ.get("KLOOP_BENCH_TARGET", "bench")
    if os.environ.get("MAKELEVEL"):
        return f"make {target}" + (f" ({argv})" if argv else "")
    return f"python -m e2e.bench {argv}".strip()


def environment() -> list[tuple[str, str]]:
    """Date, command, commit and the machine."""
    return [
        ("date (UTC)", datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")),
        ("command", f"`{command()}`"),
        ("commit", f"`{commit()}`"),
        ("CPU", _cpu_model()),
        ("nproc", str(len(os.sched_getaffinity(0)))),
        ("memory", f"{_memory_gib():.1f} GiB"),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
    ]
