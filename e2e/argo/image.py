"""The argoexec image, built locally as a single-layer docker-archive and imported into containerd.

Upstream's image is distroless plus ``/bin/argoexec``; ours holds just what the executor reads:
the binary, ``/etc/passwd``, ``/etc/group``, upstream's ``/etc/nsswitch.conf`` and ``/tmp``.
The tag carries the binary's digest, so a rebuilt argoexec is a new image and "already imported"
is a plain lookup in the node's containerd.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from e2e.argo.build import ARGO_VERSION, binary, build_argo, module_dir
from e2e.cluster.build import progress
from e2e.cluster.images import LayerFile, import_image, write_docker_archive
from e2e.cluster.local import CONTAINERD_SOCKET
from e2e.cluster.paths import IMAGES_DIR

ARGOEXEC_REPO = "kloop.local/argoexec"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def argoexec_ref() -> str:
    """The image reference of the cached argoexec (which must be built)."""
    return f"{ARGOEXEC_REPO}:v{ARGO_VERSION}-{_digest(binary('argoexec'))}"


def build_argoexec_image() -> Path:
    """The argoexec docker-archive tarball under the images cache, written when missing."""
    build_argo()
    ref = argoexec_ref()
    out = IMAGES_DIR / f"argoexec-v{ARGO_VERSION}-{ref.rsplit('-', 1)[1]}.tar"
    if out.exists():
        return out
    nsswitch = (module_dir() / "hack" / "nsswitch.conf").read_bytes()
    entries = [
        LayerFile("bin", mode=0o755),
        LayerFile("bin/argoexec", binary("argoexec").read_bytes(), mode=0o755),
        LayerFile("etc", mode=0o755),
        LayerFile(
            "etc/passwd",
            b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:8737:8737::/:/sbin/nologin\n",
        ),
        LayerFile("etc/group", b"root:x:0:\nnonroot:x:8737:\n"),
        LayerFile("etc/nsswitch.conf", nsswitch),
        LayerFile("tmp", mode=0o1777),
    ]
    return write_docker_archive(out, ref, entries, ["argoexec"], [])


def _present(ref: str) -> bool:
    proc = subprocess.run(
        ["ctr", "--address", str(CONTAINERD_SOCKET), "-n", "k8s.io", "images", "ls", "-q",
         f"name=={ref}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return ref in proc.stdout.split()


def ensure_argoexec_image() -> str:
    """Return the argoexec image reference, built and imported into the node when missing."""
    build_argo()
    ref = argoexec_ref()
    if _present(ref):
        progress(f"argoexec image {ref}: already in the node's containerd", tag="kloop-argo")
        return ref
    tarball = build_argoexec_image()
    progress(f"argoexec image {ref}: importing {tarball.name}", tag="kloop-argo")
    import_image(str(CONTAINERD_SOCKET), tarball)
    return ref
