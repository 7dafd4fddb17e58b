"""``make image``: build the operator and kit images with buildah and load them into the node.

Both come from the repository's Dockerfile (``--target operator`` / ``--target kit``) on Debian
bases mmdebstrap makes here (see ``e2e.cluster.oci`` and docs/images.md). When the local cluster
is up, each tarball is imported into its node's containerd, and the sizes containerd reports are
printed; otherwise the uncompressed sizes of the tarballs' layers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from e2e.cluster import images, local, oci
from e2e.cluster.paths import kubectl


def say(msg: str) -> None:
    print(f"[kloop-image {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_all() -> dict[str, Path]:
    """Both images as docker-archive tarballs (cached by the digest of their inputs)."""
    args = oci.prepare_context(say)
    return {target.ref(): oci.build(target, args, say) for target in (oci.OPERATOR, oci.KIT)}


def prepare_docker_context(py_version: str) -> int:
    """``make wheels``: image/wheels for ``py_version``; image/bin/kubectl when one is built."""
    say(f"wheels for Python {py_version} -> {oci.ensure_wheels(py_version, say)}")
    if kubectl().exists():
        say(f"kubectl -> {oci.ensure_kubectl()}")
    else:
        say(
            f"no pinned kubectl at {kubectl()}: build it with `python -m e2e.cluster build`, "
            f"or copy a kubectl to {oci.CONTEXT_KUBECTL}, before `docker build --target kit`"
        )
    return 0


def containerd_sizes(refs: list[str]) -> dict[str, str]:
    """The SIZE column of ``ctr images ls`` (the layers are stored uncompressed)."""
    out = subprocess.run(
        ["ctr", "--address", str(local.CONTAINERD_SOCKET), "-n", "k8s.io", "images", "ls"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    sizes: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        cols = line.split()
        if cols and cols[0] in refs:
            sizes[cols[0]] = f"{cols[3]} {cols[4]}"
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.image", description=__doc__)
    parser.add_argument(
        "--no-import", action="store_true", help="only build the tarballs, even if a cluster is up"
    )
    parser.add_argument(
        "--context-only",
        action="store_true",
        help="only fill image/ for a `docker build`: wheels for --python, and kubectl if built",
    )
    parser.add_argument("--python", default="3.11", help="the Python of BASE (--context-only)")
    args = parser.parse_args(argv)
    if args.context_only:
        return prepare_docker_context(args.python)
    started = time.monotonic()
    built = build_all()
    say(f"built in {time.monotonic() - started:.0f}s")
    for ref, tar in built.items():
        print(f"{ref:32} {tar}  ({oci.archive_size(tar) / 2**20:.1f} MiB uncompressed)")
    if args.no_import or not local.is_up():
        say("local cluster not up (or --no-import): tarballs not imported")
        return 0
    for tar in built.values():
        images.import_image(str(local.CONTAINERD_SOCKET), tar)
    for ref, size in containerd_sizes(list(built)).items():
        print(f"{ref:32} {size} in the node's containerd")
    return 0


if __name__ == "__main__":
    sys.exit(main())
