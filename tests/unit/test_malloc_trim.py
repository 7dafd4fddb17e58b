"""The heap trimmer finds glibc's malloc_trim here and gives free pages back."""

from __future__ import annotations

import platform

import pytest

from kloop import malloc

pytestmark = pytest.mark.unit


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trimming_returns_freed_heap_pages_below_a_live_allocation() -> None:
    trim = malloc.trimmer()
    assert trim is not None, "glibc has malloc_trim"
    chunks, keep = [], []
    for _ in range(1000):  # ~100 MB on the heap, each chunk below a small block that stays
        chunks.append(bytearray(100_000))
        keep.append(bytearray(1000))
    before = _rss_kib()
    del chunks
    held = before - _rss_kib()
    trim()
    assert held < 20_000, "free() alone gives back none of it: the holes are below live blocks"
    assert before - _rss_kib() > 50_000
    del keep
