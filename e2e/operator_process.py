"""Run the operator as a real process (as users do out of cluster), so tests can kill it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from e2e.cluster.kit import kit_image
from e2e.procs import log_tail, stop_process


class RunningOperator(Protocol):
    """What a test may do with the operator, whether a host process or the chart's Deployment."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def kill(self) -> None: ...

    def log_tail(self, lines: int = 40) -> str: ...


class OperatorProcess:
    """``python -m kloop.main`` against a kubeconfig, logging to a file."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        namespaces: list[str],
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.namespaces = namespaces
        self.extra_args = extra_args or []
        self.env = env or {}
        self.launcher = launcher or [sys.executable, "-m", "kloop.main"]
        """The command before the operator's own arguments (e.g. under a profiler)."""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the operator; returns once kopf has logged in to the cluster."""
        args = list(self.launcher)
        for ns in self.namespaces:
            args += ["-n", ns]
        args += self.extra_args
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "KLOOP_KIT_IMAGE": kit_image(),  # workspace containers: the locally built kit
                **self.env,
                "KUBECONFIG": str(self.kubeconfig),
            },
        )
        started = self.log_path.stat().st_size
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until kopf has logged in (or the process died)
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited at once:\n{self.log_tail()}")
            with self.log_path.open("rb") as f:
                f.seek(started)
                if b"Initial authentication has finished" in f.read():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"operator did not log in within 30s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies or the pod is OOM-killed."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait, as on a rollout."""
        stop_process(self.proc)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the operator's log, for failure messages."""
        return log_tail(self.log_path, lines)
