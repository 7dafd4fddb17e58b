"""CPU and memory of a process from /proc: the bench's reader (e2e/bench/procstat.py)."""

from __future__ import annotations

from e2e.bench.procstat import cpu_seconds, memory

__all__ = ["cpu_seconds", "peak_rss_mib", "rss_mib"]


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set so far (VmHWM), in MiB."""
    return memory(pid).peak_mib


def rss_mib(pid: int) -> float:
    """The process's resident set now (VmRSS), in MiB."""
    return memory(pid).rss_mib
