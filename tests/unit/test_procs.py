"""Stopping the tests' host processes: SIGTERM first, SIGKILL for one that ignores it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from e2e.procs import stop_process

pytestmark = pytest.mark.unit

IGNORES_SIGTERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    proc = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    started = time.monotonic()
    stop_process(proc, grace=0.5)
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_a_process_that_honours_sigterm_ends_with_it() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop_process(proc, grace=10)
    assert proc.returncode == -signal.SIGTERM
