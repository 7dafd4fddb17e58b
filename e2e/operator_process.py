"""Run the operator as a real process (as users do out of cluster), so tests can kill it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class OperatorProcess:
    """``python -m kloop.main`` against a kubeconfig, logging to a file."""

    def __init__(self, kubeconfig: Path, log_path: Path, namespaces: list[str]) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.namespaces = namespaces
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the operator; returns once the process runs (kopf then lists and watches)."""
        args = [sys.executable, "-m", "kloop.main"]
        for ns in self.namespaces:
            args += ["-n", ns]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
        )
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(f"operator exited at once:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies or the pod is OOM-killed."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait, as on a rollout."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        """The end of the operator's log, for failure messages."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
