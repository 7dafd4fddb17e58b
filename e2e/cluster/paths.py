"""Where the harness keeps its cache (survives runs) and its state (one running cluster)."""

from __future__ import annotations

import os
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
