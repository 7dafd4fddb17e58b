"""Small helpers for the host processes the tests start: a free port, a clean stop, the log."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on right now (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 20) -> None:
    """SIGTERM and wait up to ``grace`` seconds, then SIGKILL; nothing to do if it has exited."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a process's log file ("" before it exists), for failures."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
