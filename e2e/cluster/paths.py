"""Where the harness keeps its cache (survives runs) and its state (one running cluster)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

K8S_VERSION = "1.34.4"
ETCD_VERSION = "3.6.4"

CACHE_ROOT = Path(os.environ.get("KLOOP_CACHE", Path.home() / ".cache" / "kloop"))
K8S_BIN = CACHE_ROOT / f"k8s-v{K8S_VERSION}" / "bin"
ETCD_BIN = CACHE_ROOT / f"etcd-v{ETCD_VERSION}" / "bin"
IMAGES_DIR = CACHE_ROOT / "images"

STATE_ROOT = Path(os.environ.get("KLOOP_CLUSTER_DIR", "/var/lib/kloop-cluster"))
PKI = STATE_ROOT / "pki"
LOGS = STATE_ROOT / "logs"
PIDS = STATE_ROOT / "pids"
ADMIN_KUBECONFIG = STATE_ROOT / "admin.kubeconfig"


def kubectl() -> Path:
    """The pinned kubectl the harness builds (the one on PATH may be another version)."""
    return K8S_BIN / "kubectl"


def run_kubectl(
    kubeconfig: Path,
    *args: str,
    stdin: str | None = None,
    check: bool = True,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """Run the pinned kubectl against ``kubeconfig``; with ``check``, fail with its output."""
    proc = subprocess.run(
        [str(kubectl()), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def apply_crds(kubeconfig: Path, *manifests: Path, field_manager: str = "kloop-e2e") -> list[str]:
    """Server-side apply CRD manifests (files or directories), wait until they are served.

    Server-side, because large CRDs exceed client-side apply's annotation limit; returns the
    applied ``customresourcedefinition.../<name>`` references.
    """
    files = [f"--filename={path}" for path in manifests]
    applied = run_kubectl(
        kubeconfig, "apply", "--server-side", "--force-conflicts",
        f"--field-manager={field_manager}", "-o", "name", *files,
    ).stdout.split()  # fmt: skip
    run_kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", *applied)
    return applied
