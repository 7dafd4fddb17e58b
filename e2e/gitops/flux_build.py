"""Build Flux's source-controller and kustomize-controller from the Go module proxy, once.

Both controllers' go.mod carry ``replace`` directives, so ``go install mod@version`` refuses
them. We build each inside a throw-away wrapper module that imports the controller's main
package and copies upstream's module-to-module replaces (its ``./api`` path replace is dropped:
the wrapper uses the published api module). The v1.10 line needs modules the proxy refuses
here, hence v1.9.6; source-controller also needs ``fluxcd/pkg/artifact`` pinned to v0.18.0
because v0.18.3 is refused (see docs/gitops.md). Each binary is moved into the cache with an
atomic rename, so a killed build never looks cached.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster.build import install_binary_atomically, progress, run_go
from e2e.cluster.paths import CACHE_ROOT

FLUX_VERSION = "1.9.6"
FLUX_ROOT = CACHE_ROOT / f"flux-v{FLUX_VERSION}"
FLUX_BIN = FLUX_ROOT / "bin"


@dataclass(frozen=True)
class Controller:
    """One Flux controller: its module and any replaces beyond upstream's own."""

    name: str
    extra_replaces: tuple[tuple[str, str], ...] = ()

    @property
    def module(self) -> str:
        return f"github.com/fluxcd/{self.name}"

    @property
    def binary(self) -> Path:
        return FLUX_BIN / self.name


SOURCE_CONTROLLER = Controller(
    "source-controller",
    extra_replaces=(("github.com/fluxcd/pkg/artifact", "github.com/fluxcd/pkg/artifact@v0.18.0"),),
)
KUSTOMIZE_CONTROLLER = Controller("kustomize-controller")
CONTROLLERS = (SOURCE_CONTROLLER, KUSTOMIZE_CONTROLLER)


def _progress(msg: str) -> None:
    progress(msg, tag="kloop-flux")


def _download(module: str, cwd: Path, log: Path) -> dict[str, str]:
    info: dict[str, str] = json.loads(
        run_go(["go", "mod", "download", "-json", f"{module}@v{FLUX_VERSION}"], cwd, log)
    )
    return info


def upstream_replaces(gomod: str) -> list[tuple[str, str]]:
    """Upstream's replaces that point at another module version (not at a local path)."""
    found: list[tuple[str, str]] = []
    for old, new, version in re.findall(
        r"^\s*(?:replace\s+)?(\S+)\s+=>\s+(\S+)\s+(v\S+)\s*$", gomod, re.MULTILINE
    ):
        found.append((old, f"{new}@{version}"))
    return found


def module_dir(controller: Controller) -> Path:
    """The unpacked controller module in the Go module cache (downloading it if needed)."""
    with tempfile.TemporaryDirectory(prefix="kloop-fluxmod-") as tmp:
        work = Path(tmp)
        log = work / "log"
        run_go(["go", "mod", "init", "local/fluxmod"], work, log)
        return Path(_download(controller.module, work, log)["Dir"])


def crd_files() -> list[Path]:
    """The CRD YAMLs both controllers ship, from the module cache."""
    files: list[Path] = []
    for controller in CONTROLLERS:
        files += sorted((module_dir(controller) / "config" / "crd" / "bases").glob("*.yaml"))
    return files


def _build_one(controller: Controller, log: Path) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"kloop-{controller.name}-") as tmp:
        work = Path(tmp)
        _progress(f"{controller.name} v{FLUX_VERSION}: resolving modules (log: {log})")
        run_go(["go", "mod", "init", f"local/{controller.name}-build"], work, log)
        info = _download(controller.module, work, log)
        gomod = Path(info["GoMod"]).read_text()
        go_line = re.search(r"^go (\S+)", gomod, re.MULTILINE)
        if go_line:
            run_go(["go", "mod", "edit", f"-go={go_line.group(1)}"], work, log)
        for old, new in [*upstream_replaces(gomod), *controller.extra_replaces]:
            run_go(["go", "mod", "edit", f"-replace={old}={new}"], work, log)
        (work / "tools.go").write_text(
            f'//go:build tools\n\npackage tools\n\nimport _ "{controller.module}"\n'
        )
        run_go(["go", "get", f"{controller.module}@v{FLUX_VERSION}"], work, log)
        _progress(f"{controller.name}: modules resolved in {time.monotonic() - started:.0f}s")
        built = work / controller.name
        t0 = time.monotonic()
        run_go(
            ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(built), controller.module],
            work,
            log,
        )
        _progress(f"{controller.name}: compiled in {time.monotonic() - t0:.0f}s")
        install_binary_atomically(built, controller.binary)  # the cache holds whole binaries only
    _progress(f"{controller.name} v{FLUX_VERSION}: built in {time.monotonic() - started:.0f}s")


def build_flux() -> Path:
    """Return the directory holding both controllers, building the missing ones."""
    missing = [c for c in CONTROLLERS if not c.binary.is_file()]
    if not missing:
        _progress(f"flux v{FLUX_VERSION}: cached in {FLUX_BIN}")
        return FLUX_BIN
    FLUX_ROOT.mkdir(parents=True, exist_ok=True)
    log = FLUX_ROOT / "build.log"
    log.write_text("")
    for controller in missing:
        _build_one(controller, log)
    return FLUX_BIN


if __name__ == "__main__":
    try:
        print(build_flux())
    except RuntimeError as exc:
        sys.exit(str(exc))
