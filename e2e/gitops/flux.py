"""Run Flux's source-controller and kustomize-controller as host processes against a cluster.

Both bind only loopback ports chosen at start (metrics, health, and source-controller's artifact
server), so they never clash with another process on the machine. kustomize-controller downloads
artifacts from the URL source-controller advertises, hence ``--storage-adv-addr`` on loopback.
Leader election is off: one replica each, for this session only.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client

from e2e.cluster.paths import apply_crds, run_kubectl
from e2e.gitops.flux_build import KUSTOMIZE_CONTROLLER, SOURCE_CONTROLLER, build_flux, crd_files
from e2e.procs import free_port, log_tail, stop_process

# The kinds tests create, in deletion order: a Kustomization prunes what it applied while its
# source is still there.
KUSTOMIZATIONS = ("kustomize.toolkit.fluxcd.io", "v1", "kustomizations")
GIT_REPOSITORIES = ("source.toolkit.fluxcd.io", "v1", "gitrepositories")
TEST_KINDS = (KUSTOMIZATIONS, GIT_REPOSITORIES)


def _kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_kubectl(kubeconfig, *args, check=False)


def flux_crds(kubeconfig: Path) -> set[str]:
    """The Flux CRDs the cluster serves now (``customresourcedefinition.../<name>``)."""
    out = _kubectl(kubeconfig, "get", "crd", "-o", "name").stdout
    return {line for line in out.split() if line.endswith(".toolkit.fluxcd.io")}


def install_flux_crds(kubeconfig: Path) -> list[str]:
    """Server-side apply Flux's CRDs (too large for client-side apply) and wait until served."""
    return apply_crds(kubeconfig, *crd_files())


def remove_unused_crds(kubeconfig: Path, names: Iterable[str]) -> list[str]:
    """Delete each of the CRDs ``names`` that holds no object any more; return those kept.

    Run after the controllers stopped: an object left then would keep its finalizer, and the
    CRD's deletion would hang on it, so a CRD with objects is kept (and reported).
    """
    kept = []
    for name in names:
        crd = name.rsplit("/", 1)[-1]  # plural.group, which kubectl get takes as a resource
        listed = _kubectl(kubeconfig, "get", crd, "--all-namespaces", "-o", "name")
        if listed.returncode != 0 or listed.stdout.strip():
            kept.append(crd)
            continue
        _kubectl(kubeconfig, "delete", "crd", crd, "--ignore-not-found", "--timeout=60s")
    return kept


def delete_flux_objects(api: client.ApiClient, namespace: str, timeout: float = 90) -> None:
    """Delete ``namespace``'s Kustomizations, then its GitRepositories, and wait until gone.

    Both carry ``finalizers.fluxcd.io``, which only the running controllers remove: deleted
    with the namespace after the session stopped them, they would hold it Terminating forever.
    Call this while the controllers run. What is still there at the deadline loses its
    finalizer (so the namespace can go) and the call raises.
    """
    custom = client.CustomObjectsApi(api)
    for group, version, plural in TEST_KINDS:
        for obj in custom.list_namespaced_custom_object(group, version, namespace, plural)["items"]:
            with contextlib.suppress(client.ApiException):
                custom.delete_namespaced_custom_object(
                    group, version, namespace, plural, obj["metadata"]["name"]
                )
        deadline = time.monotonic() + timeout
        left = []
        while time.monotonic() < deadline:
            left = custom.list_namespaced_custom_object(group, version, namespace, plural)["items"]
            if not left:
                break
            time.sleep(0.5)
        if left:
            for obj in left:
                custom.patch_namespaced_custom_object(
                    group, version, namespace, plural, obj["metadata"]["name"],
                    {"metadata": {"finalizers": None}},
                )  # fmt: skip
            names = [obj["metadata"]["name"] for obj in left]
            raise RuntimeError(f"{plural} {names} in {namespace} not deleted within {timeout}s")


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
