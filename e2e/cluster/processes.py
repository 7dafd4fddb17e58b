"""Start daemons detached with a pid file and a log file each; stop them without leaving any."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from e2e.cluster.paths import LOGS, PIDS


def start(
    name: str, argv: list[str], env: dict[str, str] | None = None, match: str | None = None
) -> int:
    """Start ``argv`` in its own session, logging to LOGS/<name>.log; return its pid.

    ``match`` is what the live process's command line must contain for :func:`running` (default
    ``argv[0]``); give it when ``argv[0]`` execs another program (``nsenter``, ``unshare``).
    """
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    log = (LOGS / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    (PIDS / f"{name}.pid").write_text(f"{proc.pid}\n{match or argv[0]}\n")
    return proc.pid


def _pid_of(name: str) -> tuple[int, str] | None:
    path = PIDS / f"{name}.pid"
    if not path.exists():
        return None
    pid_text, _, binary = path.read_text().partition("\n")
    return int(pid_text), binary.strip()


def _cmdline(pid: int) -> str:
    return " ".join(cmdline(pid))


def cmdline(pid: int) -> list[str]:
    """The argv of a live process (empty when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]


def pid_of(name: str) -> int | None:
    """The pid recorded for the daemon started as ``name`` (alive or not)."""
    found = _pid_of(name)
    return found[0] if found else None


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def running(name: str) -> bool:
    """Whether the daemon started as ``name`` is alive (its pid checked against its binary)."""
    found = _pid_of(name)
    if found is None:
        return False
    pid, binary = found
    command = _cmdline(pid)
    if not command and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)  # a process in execve reads an empty command line for an instant
        command = _cmdline(pid)
    return binary in command and not _is_zombie(pid)


def log_tail(name: str, lines: int = 30) -> str:
    """The end of a daemon's log, for error messages."""
    path = LOGS / f"{name}.log"
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def kill_pid(pid: int, grace: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def stop(name: str, grace: float = 10.0) -> None:
    """Stop the daemon started under ``name``, if it still runs, and forget its pid file."""
    found = _pid_of(name)
    if found is not None and running(name):
        kill_pid(found[0], grace)
    (PIDS / f"{name}.pid").unlink(missing_ok=True)


def started_names() -> list[str]:
    """Names with a pid file, in start order."""
    if not PIDS.exists():
        return []
    files = sorted(PIDS.glob("*.pid"), key=lambda p: p.stat().st_mtime_ns)
    return [p.stem for p in files]


def pids_matching(fragment: str) -> list[int]:
    """Every live process whose command line contains ``fragment``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and fragment in _cmdline(int(entry.name)):
            found.append(int(entry.name))
    return found
