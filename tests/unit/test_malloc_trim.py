"""The heap trimmer finds glibc's malloc_trim here and gives free pages back."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

# In a fresh interpreter: a heap fragmented by earlier tests could place the small blocks in
# old holes, and then free() alone would give the big ones back from the top of the heap.
PROBE = """
import json
from kloop import malloc

def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

trim = malloc.trimmer()
chunks, keep = [], []
for _ in range(1000):  # ~100 MB on the heap, each chunk below a small block that stays
    chunks.append(bytearray(100_000))
    keep.append(bytearray(1000))
before = rss_kib()
del chunks
after_free = rss_kib()
if trim is not None:
    trim()
print(json.dumps({"found": trim is not None, "free": before - after_free,
                  "trim": before - rss_kib()}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trimming_returns_freed_heap_pages_below_a_live_allocation() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    result = json.loads(out)
    assert result["found"], "glibc has malloc_trim"
    assert result["free"] < 20_000, "free() alone gives back none of it: holes below live blocks"
    assert result["trim"] > 50_000
