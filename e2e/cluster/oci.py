"""Build the Dockerfile's images with buildah, without a registry: base, wheels, build, export.

- **Bases.** ``mmdebstrap --variant=minbase`` makes a Debian rootfs from the host's apt sources
  (``python3`` and ``git``, which the operator's git triggers run; the kit's base also
  ``busybox-static``), once per set of inputs,
  cached as ``~/.cache/kloop/images/<name>-<suite>-<key>.tar`` and turned into the buildah image
  ``localhost/<name>:<suite>-<key>``; the Dockerfile receives it as ``BASE`` / ``KIT_BASE``.
- **Build context.** ``image/wheels`` gets pip, setuptools and kloop's dependencies as wheels for
  the base's Python, at the versions installed in this checkout's venv (``pip download`` on the
  host, which can reach the index; the build itself runs with ``--network none``), cached under
  ``~/.cache/kloop/wheels-<key>/``. ``image/bin/kubectl`` is the harness's pinned kubectl.
- **Build.** ``buildah bud --layers --target <t>`` (buildah's own storage under
  ``/var/lib/containers``, overlay driver, keeps the layer cache between runs), then
  ``buildah push`` to a docker-archive tarball under ``~/.cache/kloop/images/buildah/`` named by
  a digest of every input: a warm run finds the tarball and never calls buildah.

Buildah runs as root with its defaults (overlay storage on the host's ext4, ``oci`` isolation
through runc); no storage configuration was needed on these machines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO

from e2e.cluster.debian import ensure_debian
from e2e.cluster.paths import CACHE_ROOT, IMAGES_DIR, kubectl

REPO = Path(__file__).resolve().parents[2]
CONTEXT = REPO / "image"
WHEELS = CONTEXT / "wheels"
CONTEXT_KUBECTL = CONTEXT / "bin" / "kubectl"
DEBIAN_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
PACKAGES = {
    "buildah": "/usr/bin/buildah",
    "mmdebstrap": "/usr/bin/mmdebstrap",
    "runc": "/usr/sbin/runc",
}
BASE_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXCLUDES = ("doc", "man", "locale", "info")
PYTHON_LABEL = "dev.kloop.base.python"
BUILT_DIR = IMAGES_DIR / "buildah"  # the exported images, apart from the harness's own
# Inputs of the build besides the sources: a change to any of them makes new tarballs.
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md")

Say = Callable[[str], None]


@dataclass(frozen=True)
class Base:
    """A Debian base image made by mmdebstrap: its buildah name and the packages it includes."""

    name: str
    include: tuple[str, ...]


OPERATOR_BASE = Base("kloop-base", ("python3", "ca-certificates", "git"))
KIT_BASE = Base("kloop-kit-base", ("python3", "ca-certificates", "git", "busybox-static"))


@dataclass(frozen=True)
class Target:
    """A final stage of the Dockerfile and the image reference it is built as."""

    stage: str
    repository: str
    base: Base
    base_arg: str  # the Dockerfile ARG its stages start FROM

    def ref(self) -> str:
        return f"{self.repository}:{project_version()}"


OPERATOR = Target("operator", "kloop.local/kloop", OPERATOR_BASE, "BASE")
KIT = Target("kit", "kloop.local/kloop-kit", KIT_BASE, "KIT_BASE")
BASE_ARGS = ("BASE", "KIT_BASE")


def project_version() -> str:
    """The version in pyproject.toml: the tag of both images."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return str(data["project"]["version"])


def _pyproject_dependencies() -> list[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [str(dep) for dep in data["project"]["dependencies"]]


def ensure_packages(say: Say = print) -> None:
    """Install buildah, mmdebstrap and runc from Debian when missing.

    buildah only Recommends an OCI runtime, and recommends are not installed: without runc a
    fresh machine's first ``buildah bud`` fails at its first RUN.
    """
    ensure_debian(PACKAGES, say)


def _buildah(*args: str, quiet: bool = True) -> str:
    proc = subprocess.run(["buildah", *args], capture_output=quiet, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or "")[-3000:] if quiet else ""
        raise RuntimeError(f"buildah {' '.join(args[:3])} ... failed:\n{detail}")
    return proc.stdout or ""


def debian_suite() -> str:
    """The host's Debian codename: bases are made from the host's own apt sources."""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("/etc/os-release names no VERSION_CODENAME: not a Debian host")


def host_sources() -> list[str]:
    """The host's apt sources files (``.list`` and deb822 ``.sources``): mmdebstrap's mirrors."""
    found: list[str] = []
    for source in DEBIAN_SOURCES:
        if source.is_file() and source.stat().st_size:
            found.append(str(source))
        elif source.is_dir():
            found += [str(p) for p in sorted(source.iterdir()) if p.suffix in (".list", ".sources")]
    return found


def _base_key(base: Base, suite: str) -> str:
    digest = hashlib.sha256(f"{suite} {' '.join(base.include)} {EXCLUDES}".encode())
    for source in host_sources():
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:12]


def _base_rootfs(base: Base, suite: str, key: str, say: Say) -> Path:
    out = IMAGES_DIR / f"{base.name}-{suite}-{key}.tar"
    if out.exists():
        return out
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    log = IMAGES_DIR / f"{base.name}.mmdebstrap.log"
    say(f"making the Debian {suite} base {base.name} with mmdebstrap (log {log})")
    started = time.monotonic()
    excludes = [f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in EXCLUDES]
    with staging_path(out) as partial, log.open("w") as log_file:
        proc = subprocess.run(
            [
                "mmdebstrap",
                "--mode=root",
                "--variant=minbase",
                f"--include={','.join(base.include)}",
                *excludes,
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                suite,
                str(partial),
                *host_sources(),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"mmdebstrap failed; see {log}")
        partial.rename(out)
    say(f"{base.name}: {out.stat().st_size / 2**20:.0f} MB in {time.monotonic() - started:.0f}s")
    return out


@contextlib.contextmanager
def staging_path(out: Path) -> Iterator[Path]:
    """A path of its own to write ``out``'s content to, in a fresh directory next to ``out``.

    Two cold builds at once (worktrees share the cache) each write their own file and rename it
    into place; the directory, with anything left in it, goes afterwards.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        yield staging / out.name
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def image_exists(ref: str) -> bool:
    """Whether buildah's storage has an image named ``ref``."""
    proc = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True)
    return proc.returncode == 0


def ensure_base(base: Base, say: Say = print) -> str:
    """The buildah name of ``base``, made (mmdebstrap) and imported once per set of inputs."""
    suite = debian_suite()
    key = _base_key(base, suite)
    ref = f"localhost/{base.name}:{suite}-{key}"
    if image_exists(ref):
        return ref
    rootfs = _base_rootfs(base, suite, key, say)
    say(f"importing {rootfs.name} into buildah as {ref}")
    container = _buildah("from", "--quiet", "scratch").strip()
    try:
        _buildah("add", "--quiet", container, str(rootfs), "/")
        label = f"{PYTHON_LABEL}={_rootfs_python(rootfs)}"
        _buildah("config", "--env", BASE_PATH, "--cmd", "/bin/sh", "--label", label, container)
        _buildah("commit", "--quiet", container, ref)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)
    return ref


def python_version(base_ref: str) -> str:
    """The ``python3.N`` of a base, from the label ``ensure_base`` gave it."""
    fmt = '{{index .OCIv1.Config.Labels "' + PYTHON_LABEL + '"}}'
    version = _buildah("inspect", "--type", "image", "--format", fmt, base_ref).strip()
    if not re.fullmatch(r"3\.\d+", version):
        raise RuntimeError(f"{base_ref} has no {PYTHON_LABEL} label")
    return version


def _rootfs_python(rootfs: Path) -> str:
    """``3.11`` for a rootfs tarball whose ``usr/bin`` holds ``python3.11``."""
    with tarfile.open(rootfs) as tar:
        names = " ".join(tar.getnames())
    versions: list[str] = sorted(set(re.findall(r"usr/bin/python(3\.\d+)\b", names)))
    if not versions:
        raise RuntimeError(f"no usr/bin/python3.N in {rootfs}")
    return versions[-1]


def _constraints() -> list[str]:
    """Every distribution installed in this venv, pinned (kloop itself and build tools aside)."""
    skip = {"kloop", "pip", "setuptools", "wheel"}
    pins = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in skip:
            pins.add(f"{name.lower()}=={dist.version}")
    return sorted(pins)


def _platforms() -> list[str]:
    """The manylinux tags for glibc 2.36 (bookworm) and older, for this machine's architecture."""
    arch = platform.machine()
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 4, -1)]
    return tags + [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]


def wheels_key(py_version: str) -> str:
    """What decides the wheel set: the base's Python, the requirements and the venv's versions."""
    text = json.dumps([py_version, _platforms(), _pyproject_dependencies(), _constraints()])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _download_wheels(py_version: str, dest: Path) -> None:
    """``pip download`` the wheels for the base's Python into ``dest``, pinned to this venv."""
    constraints = dest / "constraints.txt"
    constraints.write_text("\n".join(_constraints()) + "\n")
    platforms = [arg for tag in _platforms() for arg in ("--platform", tag)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--implementation=cp",
            f"--python-version={py_version}",
            *platforms,
            "--dest",
            str(dest),
            "--constraint",
            str(constraints),
            "pip",
            "setuptools>=77",
            *_pyproject_dependencies(),
        ],
        check=True,
    )
    constraints.unlink()


def ensure_wheels(py_version: str, say: Say = print) -> Path:
    """Download the wheels once into the cache, then mirror them into ``image/wheels``."""
    cached = CACHE_ROOT / f"wheels-py{py_version}-{wheels_key(py_version)}"
    if not cached.exists():
        say(f"downloading wheels for Python {py_version} into {cached}")
        with staging_path(cached) as partial:
            partial.mkdir()
            _download_wheels(py_version, partial)
            with contextlib.suppress(OSError):  # another process finished first: keep its set
                partial.rename(cached)
    wanted = {p.name for p in cached.glob("*.whl")}
    WHEELS.mkdir(parents=True, exist_ok=True)
    for stale in WHEELS.iterdir():
        if stale.name not in wanted:
            stale.unlink()
    for name in wanted - {p.name for p in WHEELS.iterdir()}:
        shutil.copy2(cached / name, WHEELS / name)
    return WHEELS


def ensure_kubectl() -> Path:
    """The harness's pinned kubectl in the build context (copied when it differs)."""
    src = kubectl()
    if not src.exists():
        from e2e.cluster import build  # builds the pinned Kubernetes binaries (cached)

        build.build_kubernetes()
    CONTEXT_KUBECTL.parent.mkdir(parents=True, exist_ok=True)
    if not CONTEXT_KUBECTL.exists() or _file_digest(CONTEXT_KUBECTL) != _file_digest(src):
        shutil.copy2(src, CONTEXT_KUBECTL)
    return CONTEXT_KUBECTL


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def context_digest(build_args: dict[str, str]) -> str:
    """A digest of everything the build reads: context files, sources, wheels, kubectl, bases."""
    digest = hashlib.sha256(json.dumps(build_args, sort_keys=True).encode())
    digest.update(Path(__file__).read_bytes())
    paths = [REPO / name for name in CONTEXT_FILES]
    paths += sorted(
        p
        for p in (REPO / "operator").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
    )
    paths += sorted(p for p in CONTEXT.rglob("*") if p.is_file() and p.parent != WHEELS)
    for path in paths:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0")
        digest.update(_file_digest(path).encode())
    wheels = sorted(p.name for p in WHEELS.glob("*.whl"))
    digest.update("\n".join(wheels).encode())
    return digest.hexdigest()[:12]


def prepare_context(targets: tuple[Target, ...], say: Say = print) -> dict[str, str]:
    """Bases of ``targets``, wheels and kubectl ready; return their base build args.

    Only the bases the targets need are made: ``make cluster-up`` needs only the kit's.
    """
    ensure_packages(say)
    args = {target.base_arg: ensure_base(target.base, say) for target in targets}
    pythons = {python_version(ref) for ref in args.values()}
    if len(pythons) != 1:
        raise RuntimeError(f"the bases {sorted(args.values())} have different Pythons")
    ensure_wheels(pythons.pop(), say)
    ensure_kubectl()
    return args


def tarball(target: Target, key: str) -> Path:
    """Where the docker-archive of ``target`` for inputs ``key`` is cached."""
    name = target.repository.rsplit("/", 1)[-1]
    return BUILT_DIR / f"{name}-{project_version()}-{key}.tar"


def build(target: Target, build_args: dict[str, str], say: Say = print) -> Path:
    """Build ``target`` (cached by the digest of its inputs) and export it as a docker-archive.

    The digest covers only the target's own base; the other base ARG is set to it as well, so
    no stage ever names an image from a registry (buildah skips the unused stages anyway).
    """
    own = build_args[target.base_arg]
    out = tarball(target, context_digest({target.base_arg: own}))
    if out.exists():
        return out
    ref = target.ref()
    # Built under a tag of its own inputs, so two checkouts building at once never export each
    # other's image; tagged ``ref`` too afterwards, for ``buildah from`` and friends.
    unique = f"localhost/kloop-build-{target.stage}:{out.stem.rsplit('-', 1)[-1]}"
    say(f"buildah bud --target {target.stage} -t {unique}")
    started = time.monotonic()
    values = {name: build_args.get(name, own) for name in BASE_ARGS}
    args = [arg for key, value in values.items() for arg in ("--build-arg", f"{key}={value}")]
    _buildah(
        "bud",
        "--layers",
        "--network",
        "none",
        "--target",
        target.stage,
        *args,
        "--tag",
        unique,
        "--file",
        str(REPO / "Dockerfile"),
        str(REPO),
        quiet=False,
    )
    with staging_path(out) as partial:
        # Pushed by image id, so the archive names only ``ref``: pushing ``unique`` would add
        # that build tag to the archive, and every import would leave it in containerd.
        image_id = _buildah("images", "--quiet", "--no-trunc", unique).split()[0]
        _buildah("push", "--quiet", image_id, f"docker-archive:{partial}:{ref}")
        _buildah("tag", unique, ref)
        _buildah("rmi", unique)  # only the extra name: ``ref`` keeps the image
        partial.rename(out)
    _prune(target, keep=out)
    say(f"{ref}: built in {time.monotonic() - started:.0f}s -> {out}")
    return out


def _prune(target: Target, keep: Path, count: int = 4) -> None:
    """Keep the ``count`` newest tarballs of ``target`` (worktrees share the cache)."""
    others = sorted(
        (p for p in BUILT_DIR.glob(tarball(target, "*").name) if p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in others[count - 1 :]:
        old.unlink(missing_ok=True)


def archive_files(path: Path) -> list[str]:
    """Every path in a docker-archive's layers (later layers listed after earlier ones)."""
    files: list[str] = []
    with tarfile.open(path) as outer:
        manifest = json.load(_member(outer, "manifest.json"))
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=_member(outer, layer)) as inner:
                files += [name.removeprefix("./") for name in inner.getnames()]
    return files


def archive_size(path: Path) -> int:
    """The uncompressed size of an image: the sum of its layer tars."""
    with tarfile.open(path) as outer:
        manifest = json.load(_member(outer, "manifest.json"))
        return sum(outer.getmember(layer).size for layer in manifest[0]["Layers"])


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    member = tar.extractfile(name)
    if member is None:
        raise RuntimeError(f"{name} is not a file in {tar.name!r}")
    return member
