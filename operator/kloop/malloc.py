"""Give the C heap's free pages back to the system now and then (glibc keeps them otherwise).

JSON bodies, response bytes and large dicts are allocated with malloc, mostly on the event
loop's thread. glibc returns freed memory only from the top of its heap, so one long-lived
object above a freed region keeps the region resident: with 1,000 runs the main heap held
about 45 MiB free (``KLOOP_MEMDUMP``, docs/BENCHMARKS-scale.md). ``malloc_trim(0)`` releases
the free pages anywhere in the heap; it takes milliseconds. A no-op where the C library has
no ``malloc_trim`` (musl).
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable

TRIM_SECONDS = 10.0


def libc_function(name: str) -> Callable[..., object] | None:
    """A function of the C library by name; None where it has none (glibc's own, on musl).

    ``CDLL(None)`` is the process's own symbols: no ``ldconfig`` run to find libc.
    """
    try:
        found: Callable[..., object] | None = getattr(ctypes.CDLL(None), name, None)
    except OSError:
        return None
    return found


def trimmer() -> Callable[[], object] | None:
    """The C library's ``malloc_trim(0)`` as a function; None where it has none (musl)."""
    trim = libc_function("malloc_trim")
    if trim is None:
        return None
    return lambda: trim(0)


async def trim_forever(interval: float = TRIM_SECONDS) -> None:
    """Trim the heap every ``interval`` seconds until cancelled."""
    trim = trimmer()
    if trim is None:
        return
    while True:
        await asyncio.sleep(interval)
        trim()
