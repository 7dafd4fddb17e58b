"""The agent kit image ``kloop.local/kloop-kit:<version>``: busybox, kubectl and kloop-agent.

Makers and checkers act on their target cluster with ``kubectl`` and hand their result to the
operator with ``kloop-agent``, a Python CLI that needs pydantic. The Python runtime comes from
Debian's own packages: ``mmdebstrap --variant=extract`` unpacks ``python3-minimal`` and
``libpython3.X-stdlib`` with their dependencies (about 50 MB, no maintainer scripts run) from the
host's apt sources, so no prebuilt binary comes from anywhere but the Debian archive. pydantic and
its dependencies are installed from PyPI as wheels for that exact Python (``pip install
--target``), pinned to the versions of the environment the tests run in; the ``kloop`` package
(its ``api`` and ``cli`` parts only) is copied from this checkout. Over that go busybox-static
(every applet Debian does not already provide) and the harness's pinned ``kubectl``.

Everything is one layer in a docker-archive tarball under ``~/.cache/kloop/images``, named by the
kloop version and a digest of its inputs (so an edited agent makes a new tarball), and imported
into the node's containerd by ``python -m e2e.cluster up``.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from e2e.cluster import images
from e2e.cluster.paths import IMAGES_DIR, K8S_VERSION, kubectl

REPO = Path(__file__).resolve().parents[2]
KLOOP_SRC = REPO / "operator" / "kloop"
AGENT_PACKAGES = ("api", "cli")
PYTHON_DEPS = ("pydantic", "pydantic-core", "typing-extensions", "annotated-types")
OPTIONAL_DEPS = ("typing-inspection",)
DEBIAN_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


def kloop_version() -> str:
    """The version in the checkout's ``kloop/__init__.py`` (not whichever kloop is installed)."""
    for line in (KLOOP_SRC / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError(f"no __version__ in {KLOOP_SRC / '__init__.py'}")


def kit_image() -> str:
    """The image reference pods use: ``kloop.local/kloop-kit:<kloop version>``."""
    return f"kloop.local/kloop-kit:{kloop_version()}"


def _debian_suite() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("/etc/os-release names no VERSION_CODENAME: not a Debian host")


def _host_sources() -> list[str]:
    """The host's apt sources files: mmdebstrap reads mirrors from them."""
    found: list[str] = []
    for source in DEBIAN_SOURCES:
        if source.is_file() and source.stat().st_size:
            found.append(str(source))
        elif source.is_dir():
            found += [str(p) for p in sorted(source.iterdir()) if p.suffix in (".list", ".sources")]
    return found


def python_rootfs(say: Callable[[str], None] = print) -> Path:
    """A Debian rootfs tarball with python3 (cached per Debian suite)."""
    suite = _debian_suite()
    out = IMAGES_DIR / f"debian-{suite}-python3-rootfs.tar"
    if out.exists():
        return out
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.tar")
    excludes = [f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale")]
    log = IMAGES_DIR / "debian-rootfs.log"
    say(f"unpacking python3 from Debian {suite} with mmdebstrap (log {log})")
    with log.open("w") as log_file:
        proc = subprocess.run(
            [
                "mmdebstrap",
                "--mode=root",
                "--variant=extract",
                "--include=python3-minimal,libpython3-stdlib",
                *excludes,
                suite,
                str(partial),
                *_host_sources(),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"mmdebstrap failed; see {log}")
    partial.rename(out)
    return out


def _python_version(rootfs: Path) -> str:
    """``3.11`` for a rootfs whose ``usr/bin`` holds ``python3.11``."""
    with tarfile.open(rootfs) as tar:
        for name in tar.getnames():
            stem = name.removeprefix("./")
            if (
                stem.startswith("usr/bin/python3.")
                and stem[len("usr/bin/python") :].count(".") == 1
            ):
                return stem[len("usr/bin/python") :]
    raise RuntimeError(f"no usr/bin/python3.N in {rootfs}")


def _pinned_deps() -> list[str]:
    """Pydantic and its dependencies at the versions installed here (the ones tests ran with)."""
    pins = [f"{name}=={metadata.version(name)}" for name in PYTHON_DEPS]
    for name in OPTIONAL_DEPS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def python_deps(python_version: str) -> Path:
    """Pydantic's wheels for the image's Python, unpacked into a cached site directory."""
    pins = _pinned_deps()
    key = hashlib.sha256(f"{python_version} {' '.join(pins)}".encode()).hexdigest()[:12]
    out = IMAGES_DIR / f"kit-site-py{python_version}-{key}"
    if out.exists():
        return out
    partial = out.with_name(out.name + ".partial")
    subprocess.run(["rm", "-rf", str(partial)], check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",
            "--only-binary=:all:",
            "--implementation=cp",
            f"--python-version={python_version}",
            "--platform=manylinux2014_x86_64",
            "--target",
            str(partial),
            *pins,
        ],
        check=True,
    )
    partial.rename(out)
    return out


def _agent_script(python_version: str) -> bytes:
    return (
        f"#!/usr/bin/python{python_version}\n"
        '"""kloop-agent: write this pod\'s result for the kloop operator."""\n'
        "import sys\n\n"
        "from kloop.cli.agent import main\n\n"
        "sys.exit(main())\n"
    ).encode()


def _kloop_files() -> list[tuple[str, bytes]]:
    files = [("kloop/__init__.py", (KLOOP_SRC / "__init__.py").read_bytes())]
    for package in AGENT_PACKAGES:
        for path in sorted((KLOOP_SRC / package).rglob("*.py")):
            files.append((f"kloop/{path.relative_to(KLOOP_SRC)}", path.read_bytes()))
    return files


def _site_files(site: Path) -> list[tuple[str, bytes]]:
    return [
        (str(p.relative_to(site)), p.read_bytes())
        for p in sorted(site.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.parent != site / "bin"
    ]


def _add(tar: tarfile.TarFile, names: set[str], item: images.LayerFile) -> None:
    """Add ``item`` (and missing parent directories) unless the path is already there."""
    path = item.path.rstrip("/")
    parent = path.rpartition("/")[0]
    if parent and parent not in names:
        _add(tar, names, images.LayerFile(parent, mode=0o755))
    if path in names:
        return
    images.add_entry(tar, images.LayerFile(path, item.data, item.mode, item.symlink_to))
    names.add(path)


def _layer(base: Path, items: list[images.LayerFile]) -> bytes:
    """One layer: the Debian rootfs, then ``items`` over it (a path the base has is kept)."""
    buf = io.BytesIO()
    names: set[str] = set()
    with (
        tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar,
        tarfile.open(base) as src,
    ):
        for member in src.getmembers():
            name = member.name.removeprefix("./").rstrip("/")
            if not name:
                continue
            member.name = name
            tar.addfile(member, src.extractfile(member) if member.isfile() else None)
            names.add(name)
        for item in items:
            _add(tar, names, item)
    return buf.getvalue()


def _inputs_digest(rootfs: Path, site: Path, python_version: str) -> str:
    digest = hashlib.sha256()
    digest.update(f"{rootfs.name} {site.name} {python_version} {K8S_VERSION}".encode())
    digest.update(images.BUSYBOX_BINARY.read_bytes())
    digest.update(kubectl().read_bytes())
    for name, data in _kloop_files():
        digest.update(name.encode() + b"\0" + data)
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:12]


def build_kit_image(say: Callable[[str], None] = print) -> Path:
    """Build (or find cached) the kit tarball; return its path."""
    rootfs = python_rootfs(say)
    python_version = _python_version(rootfs)
    site = python_deps(python_version)
    out = (
        IMAGES_DIR
        / f"kloop-kit-{kloop_version()}-{_inputs_digest(rootfs, site, python_version)}.tar"
    )
    if out.exists():
        return out
    items = images.base_files()
    items.append(images.LayerFile("bin/busybox", images.BUSYBOX_BINARY.read_bytes(), mode=0o755))
    items += [
        images.LayerFile(applet, symlink_to="/bin/busybox")
        for applet in images.busybox_applets()
        if applet != "bin/busybox"
    ]
    items.append(images.LayerFile("usr/local/bin/kubectl", kubectl().read_bytes(), mode=0o755))
    dist = f"usr/local/lib/python{python_version}/dist-packages"
    items += [
        images.LayerFile(f"{dist}/{name}", data)
        for name, data in _site_files(site) + _kloop_files()
    ]
    items.append(
        images.LayerFile("usr/local/bin/kloop-agent", _agent_script(python_version), mode=0o755)
    )
    layer = _layer(rootfs, items)
    return images.write_docker_archive_layer(out, kit_image(), layer, [], ["/bin/sh"])
