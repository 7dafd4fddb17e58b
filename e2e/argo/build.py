"""Build Argo's workflow-controller and argoexec from the Go module proxy, once, into the cache.

The module is built through a throw-away wrapper module whose ``replace`` points at a local,
writable copy of it, because the module zip drops upstream's one symlink:
``workflow/executor/osspecific/signal_linux.go`` -> ``signal_darwin.go``. Without it argoexec
fails with ``undefined: Setpgid``; the copy restores the file. Each binary is moved into the
cache with an atomic rename, so a killed build never looks cached. A benchmark reference only:
kloop never depends on it.
"""

from __future__ import annotations

import json
import shutil
import stat
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from e2e.cluster.build import install_binary_atomically, progress, run_go
from e2e.cluster.paths import CACHE_ROOT

ARGO_VERSION = "4.0.5"
ARGO_MODULE = "github.com/argoproj/argo-workflows/v4"
ARGO_ROOT = CACHE_ROOT / f"argo-workflows-v{ARGO_VERSION}"
ARGO_BIN = ARGO_ROOT / "bin"
COMMANDS = ("workflow-controller", "argoexec")
# Upstream symlinks the module zip drops: (path in the module, the file it points at).
DROPPED_SYMLINKS = (
    (
        "workflow/executor/osspecific/signal_linux.go",
        "workflow/executor/osspecific/signal_darwin.go",
    ),
)


def _progress(msg: str) -> None:
    progress(msg, tag="kloop-argo")


def module_dir() -> Path:
    """The unpacked (read-only) Argo module in the Go module cache, downloading it if needed."""
    with tempfile.TemporaryDirectory(prefix="kloop-argomod-") as tmp:
        work = Path(tmp)
        run_go(["go", "mod", "init", "local/argomod"], work)
        info = json.loads(
            run_go(["go", "mod", "download", "-json", f"{ARGO_MODULE}@v{ARGO_VERSION}"], work)
        )
    return Path(info["Dir"])


def binary(command: str) -> Path:
    """Where the cached ``command`` lives (it may not be built yet)."""
    return ARGO_BIN / command


def _writable_copy(source: Path, dest: Path) -> None:
    """Copy the module (its files are read-only in the module cache) and restore the symlinks."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("ui", "docs", "sdks"))
    for path in dest.rglob("*"):
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    for missing, target in DROPPED_SYMLINKS:
        if not (dest / missing).exists():
            shutil.copy2(dest / target, dest / missing)


def _ldflags() -> str:
    stamp = {
        "version": f"v{ARGO_VERSION}",
        "buildDate": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "gitTag": f"v{ARGO_VERSION}",
        "gitTreeState": "clean",
    }
    return " ".join(["-s", "-w", *(f"-X={ARGO_MODULE}.{k}={v}" for k, v in stamp.items())])


def build_argo() -> Path:
    """Return the directory holding workflow-controller and argoexec, building the missing ones.

    Cold: about 3.5 min of compiling on two quiet cores plus the module download.
    """
    missing = [c for c in COMMANDS if not binary(c).is_file()]
    if not missing:
        _progress(f"argo-workflows v{ARGO_VERSION}: cached in {ARGO_BIN}")
        return ARGO_BIN
    started = time.monotonic()
    ARGO_ROOT.mkdir(parents=True, exist_ok=True)
    log = ARGO_ROOT / "build.log"
    log.write_text("")
    with tempfile.TemporaryDirectory(prefix="kloop-argobuild-") as tmp:
        work = Path(tmp)
        _progress(f"argo-workflows v{ARGO_VERSION}: resolving modules (log: {log})")
        source = module_dir()
        _writable_copy(source, work / "argo")
        wrapper = work / "wrapper"
        wrapper.mkdir()
        run_go(["go", "mod", "init", "local/argobuild"], wrapper, log)
        upstream = (work / "argo" / "go.mod").read_text()
        go_line = next(line for line in upstream.splitlines() if line.startswith("go "))
        run_go(["go", "mod", "edit", f"-go={go_line.split()[1]}"], wrapper, log)
        run_go(["go", "mod", "edit", f"-require={ARGO_MODULE}@v{ARGO_VERSION}"], wrapper, log)
        run_go(["go", "mod", "edit", f"-replace={ARGO_MODULE}=../argo"], wrapper, log)
        shutil.copy2(work / "argo" / "go.sum", wrapper / "go.sum")
        # `go get` of the two commands, not `go mod tidy`: tidy would also chase the test
        # dependencies of every package (databases, cloud mocks), minutes of downloads for nothing.
        run_go(["go", "get", *(f"{ARGO_MODULE}/cmd/{c}@v{ARGO_VERSION}" for c in COMMANDS)],
               wrapper, log)  # fmt: skip
        _progress(f"argo-workflows: modules resolved in {time.monotonic() - started:.0f}s")
        for i, command in enumerate(missing, 1):
            t0 = time.monotonic()
            _progress(f"argo-workflows: building {command} ({i}/{len(missing)})")
            built = work / command
            run_go(
                ["go", "build", "-trimpath", "-ldflags", _ldflags(), "-o", str(built),
                 f"{ARGO_MODULE}/cmd/{command}"],
                wrapper,
                log,
            )  # fmt: skip
            _progress(f"  {command} compiled in {time.monotonic() - t0:.0f}s")
            install_binary_atomically(built, binary(command))
    _progress(f"argo-workflows v{ARGO_VERSION}: built in {time.monotonic() - started:.0f}s")
    return ARGO_BIN


if __name__ == "__main__":
    try:
        print(build_argo())
    except RuntimeError as exc:
        sys.exit(str(exc))
