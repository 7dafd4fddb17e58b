"""Helm, built once from the Go module proxy into the cache (no prebuilt binary is downloaded).

``make install`` uses it to install the chart as users do; the e2e suite's in-cluster mode too.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from e2e.cluster import build
from e2e.cluster.paths import CACHE_ROOT

HELM_VERSION = "4.3.1"
HELM_BIN = CACHE_ROOT / f"helm-v{HELM_VERSION}" / "bin"


def build_helm() -> Path:
    """Return the pinned helm binary, building it when missing (about 2 min on two quiet cores)."""
    helm = HELM_BIN / "helm"
    if helm.is_file():
        return helm
    started = time.monotonic()
    module = "helm.sh/helm/v4"
    with tempfile.TemporaryDirectory(prefix="kloop-helmbuild-") as tmp:
        work = Path(tmp)
        log = HELM_BIN.parent / "build.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        build.progress(f"helm v{HELM_VERSION}: resolving modules (log: {log})")
        build.run_go(["go", "mod", "init", "local/helmbuild"], work, log)
        build.run_go(["go", "get", f"{module}/cmd/helm@v{HELM_VERSION}"], work, log)
        build.progress(f"helm v{HELM_VERSION}: building")
        out = work / "bin"
        out.mkdir()
        ldflags = f"-s -w -X={module}/internal/version.version=v{HELM_VERSION}"
        build.run_go(
            [
                "go",
                "build",
                "-trimpath",
                "-ldflags",
                ldflags,
                "-o",
                str(out / "helm"),
                f"{module}/cmd/helm",
            ],
            work,
            log,
        )
        build.install_atomically(out, HELM_BIN)
    build.progress(f"helm v{HELM_VERSION}: built in {time.monotonic() - started:.0f}s")
    return helm


def helm(kubeconfig: Path, *args: str, timeout: float = 300) -> str:
    """Run the pinned helm against ``kubeconfig``; raise with its output when it fails."""
    proc = subprocess.run(
        [str(build_helm()), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout
