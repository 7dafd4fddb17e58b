"""Container images built locally as docker-archive tarballs: no registry is ever contacted.

A docker-archive is a tar of ``manifest.json``, an image config JSON and one layer tar. We build a
pause image (pause.c from the Kubernetes module, compiled static) and a busybox-based image able
to run shell scripts; containerd imports both with ``ctr images import``.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster.paths import IMAGES_DIR, K8S_VERSION

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
BUSYBOX_IMAGE = "kloop.local/busybox:1.0"
BUSYBOX_BINARY = Path("/bin/busybox")


@dataclass(frozen=True)
class LayerFile:
    """One entry of an image layer: a file (with bytes), a directory, or a symlink."""

    path: str
    data: bytes | None = None
    mode: int = 0o644
    symlink_to: str | None = None


def add_entry(tar: tarfile.TarFile, entry: LayerFile) -> None:
    """Add one file, directory or symlink to a layer, with reproducible metadata."""
    info = tarfile.TarInfo(entry.path)
    info.mtime = 0
    info.mode = entry.mode
    if entry.symlink_to is not None:
        info.type = tarfile.SYMTYPE
        info.linkname = entry.symlink_to
        tar.addfile(info)
    elif entry.data is None:
        info.type = tarfile.DIRTYPE
        info.mode = entry.mode if entry.mode != 0o644 else 0o755
        tar.addfile(info)
    else:
        info.size = len(entry.data)
        tar.addfile(info, io.BytesIO(entry.data))


def _layer_tar(entries: list[LayerFile]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            add_entry(tar, entry)
    return buf.getvalue()


def write_docker_archive(
    out: Path, ref: str, entries: list[LayerFile], entrypoint: list[str], cmd: list[str]
) -> Path:
    """Write a single-layer docker-archive tarball that ``ctr images import`` accepts."""
    return write_docker_archive_layer(out, ref, _layer_tar(entries), entrypoint, cmd)


def write_docker_archive_layer(
    out: Path, ref: str, layer: bytes, entrypoint: list[str], cmd: list[str]
) -> Path:
    """Wrap one ready-made layer tar as a docker-archive tarball named ``ref``."""
    layer_digest = hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": entrypoint or None,
            "Cmd": cmd or None,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created_by": "kloop e2e harness"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": [f"{layer_digest}/layer.tar"]}]
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    with tarfile.open(partial, mode="w") as tar:
        for name, data in [
            (config_name, config_bytes),
            (f"{layer_digest}/layer.tar", layer),
            ("manifest.json", json.dumps(manifest).encode()),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    partial.rename(out)
    return out


def base_files() -> list[LayerFile]:
    """The few files every image needs: passwd, group, hosts and the usual directories."""
    return [
        LayerFile("etc", mode=0o755),
        LayerFile(
            "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
        ),
        LayerFile("etc/group", b"root:x:0:\nnobody:x:65534:\n"),
        LayerFile("etc/hosts", b"127.0.0.1 localhost\n"),
        LayerFile("tmp", mode=0o1777),
        LayerFile("root", mode=0o700),
        LayerFile("dev", mode=0o755),
        LayerFile("proc", mode=0o755),
        LayerFile("sys", mode=0o755),
    ]


def build_pause_image(kubernetes_src: Path) -> Path:
    """Compile upstream pause.c statically and wrap it as the sandbox image."""
    out = IMAGES_DIR / f"pause-k8s-v{K8S_VERSION}.tar"
    if out.exists():
        return out
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    binary = IMAGES_DIR / "pause.bin"
    subprocess.run(
        [
            "gcc",
            "-Os",
            "-Wall",
            "-static",
            "-DVERSION=kloop-local",
            "-o",
            str(binary),
            str(kubernetes_src / "build" / "pause" / "linux" / "pause.c"),
        ],
        check=True,
    )
    entries = [LayerFile("pause", binary.read_bytes(), mode=0o755)]
    binary.unlink()
    return write_docker_archive(out, PAUSE_IMAGE, entries, ["/pause"], [])


def busybox_applets() -> list[str]:
    """Every applet path busybox-static installs (``bin/sh``, ``usr/bin/env``, ...)."""
    return subprocess.run(
        [str(BUSYBOX_BINARY), "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()


def _busybox_entries() -> list[LayerFile]:
    applets = busybox_applets()
    entries = base_files() + [
        LayerFile("bin", mode=0o755),
        LayerFile("sbin", mode=0o755),
        LayerFile("usr", mode=0o755),
        LayerFile("usr/bin", mode=0o755),
        LayerFile("usr/sbin", mode=0o755),
        LayerFile("bin/busybox", BUSYBOX_BINARY.read_bytes(), mode=0o755),
    ]
    for applet in applets:
        if applet == "bin/busybox":
            continue
        depth = applet.count("/")
        entries.append(LayerFile(applet, symlink_to="../" * depth + "bin/busybox"))
    return entries


def build_busybox_image() -> Path:
    """A busybox-static rootfs with every applet linked: enough to run agent shell scripts."""
    digest = hashlib.sha256(BUSYBOX_BINARY.read_bytes()).hexdigest()[:12]
    out = IMAGES_DIR / f"busybox-{digest}.tar"
    if out.exists():
        return out
    return write_docker_archive(out, BUSYBOX_IMAGE, _busybox_entries(), [], ["/bin/sh"])


def import_image(ctr_address: str, tarball: Path) -> None:
    """Import a tarball into containerd's CRI namespace, where the kubelet looks for images."""
    for attempt in range(10):
        proc = subprocess.run(
            ["ctr", "--address", ctr_address, "-n", "k8s.io", "images", "import", str(tarball)],
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0:
            return
        time.sleep(0.5 * (attempt + 1))
    raise RuntimeError(f"ctr images import {tarball} failed: {proc.stderr}")
