"""Run Flux's source-controller and kustomize-controller as host processes against a cluster.

Both bind only loopback ports chosen at start (metrics, health, and source-controller's artifact
server), so they never clash with another process on the machine. kustomize-controller downloads
artifacts from the URL source-controller advertises, hence ``--storage-adv-addr`` on loopback.
Leader election is off: one replica each, for this session only.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from e2e.cluster.paths import kubectl
from e2e.gitops.flux_build import KUSTOMIZE_CONTROLLER, SOURCE_CONTROLLER, build_flux, crd_files
from e2e.procs import free_port, log_tail, stop_process


def install_flux_crds(kubeconfig: Path) -> list[str]:
    """Server-side apply Flux's CRDs (too large for client-side apply) and wait until served."""
    names = []
    for path in crd_files():
        out = subprocess.run(
            [str(kubectl()), "--kubeconfig", str(kubeconfig), "apply", "--server-side",
             "--force-conflicts", "--field-manager=kloop-e2e", "-o", "name", "-f", str(path)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        names.append(out.stdout.strip())
    subprocess.run(
        [str(kubectl()), "--kubeconfig", str(kubeconfig), "wait", "--for=condition=Established",
         "--timeout=60s", *names],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return names


@dataclass
class ControllerProcess:
    """One controller binary with its loopback ports and log file."""

    binary: Path
    log_path: Path
    args: list[str]
    health_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, kubeconfig: Path) -> None:
        argv = [
            str(self.binary),
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
            f"--health-addr=127.0.0.1:{self.health_port}",
            "--enable-leader-election=false",
            "--log-level=debug",
            *self.args,
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(kubeconfig), "RUNTIME_NAMESPACE": "default"},
            )

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the manager's /readyz answers 200 (or the process died)."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.health_port}/readyz"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.binary.name} exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.binary.name} not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        stop_process(self.proc)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


class FluxControllers:
    """source-controller and kustomize-controller, started together, logging under ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        build_flux()
        self.workdir = workdir
        storage = workdir / "artifacts"
        storage.mkdir(parents=True, exist_ok=True)
        storage_port = free_port()
        self.source = ControllerProcess(
            SOURCE_CONTROLLER.binary,
            workdir / "source-controller.log",
            [
                f"--storage-path={storage}",
                f"--storage-addr=127.0.0.1:{storage_port}",
                f"--storage-adv-addr=127.0.0.1:{storage_port}",
            ],
        )
        self.kustomize = ControllerProcess(
            KUSTOMIZE_CONTROLLER.binary, workdir / "kustomize-controller.log", ["--no-remote-bases"]
        )

    def start(self, kubeconfig: Path) -> None:
        for controller in (self.source, self.kustomize):
            controller.start(kubeconfig)
        for controller in (self.source, self.kustomize):
            controller.wait_ready()

    def stop(self) -> None:
        for controller in (self.kustomize, self.source):
            controller.stop()
