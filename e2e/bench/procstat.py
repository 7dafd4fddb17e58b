"""A process's CPU seconds and memory from /proc (what the kernel charged it, no sampling)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds_of(stat: str) -> float:
    """Utime + stime from a /proc/<pid>/stat line (fields 14 and 15), in seconds."""
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds(pid: int) -> float:
    return cpu_seconds_of(Path(f"/proc/{pid}/stat").read_text())


@dataclass(frozen=True)
class Memory:
    rss_mib: float  # VmRSS: resident now
    peak_mib: float  # VmHWM: the peak resident set since the start


def memory(pid: int) -> Memory:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return Memory(values["VmRSS"], values["VmHWM"])
