"""Build pinned Kubernetes and etcd binaries from the Go module proxy, once, into the cache.

k8s.io/kubernetes cannot be ``go install``ed (its go.mod replaces the staging modules with local
paths), so we build inside a throw-away wrapper module that pins every staging module to its
matching ``v0.Y.Z`` release. Binaries land in a directory keyed by version; a warm run returns
at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from e2e.cluster.paths import ETCD_BIN, ETCD_VERSION, K8S_BIN, K8S_VERSION

K8S_COMMANDS = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kubectl",
    "kube-proxy",
]


def go_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every Go build of the harness runs with: local toolchain, static, no VCS.

    ``extra`` adds to or overrides it, for a build that needs something more.
    """
    env = dict(os.environ)
    env.update({"GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"})
    env.update(extra or {})
    return env


def run_go(
    cmd: list[str], cwd: Path, log: Path | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Run a Go command with ``go_env(env)``, appending its output to ``log``; raise on failure."""
    proc = subprocess.run(cmd, cwd=cwd, env=go_env(env), capture_output=True, text=True)
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


def progress(msg: str, tag: str = "kloop-cluster") -> None:
    """A timestamped progress line on stdout, so a long cold build never looks hung."""
    print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _staging_modules(kube_gomod: str) -> list[str]:
    return re.findall(r"^\s*(k8s\.io/[^\s]+)\s+=>\s+\./staging/src/", kube_gomod, re.MULTILINE)


def _all_present(directory: Path, names: list[str]) -> bool:
    return all((directory / n).is_file() for n in names)


def install_atomically(built: Path, dest: Path) -> None:
    """Move freshly built binaries into place atomically, so a killed build never looks cached.

    ``built`` is a directory: ``dest`` becomes a copy of it. A temporary directory next to
    ``dest`` is renamed into place, so two builds at once never mix their files.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".partial-"))
    for f in built.iterdir():
        shutil.copy2(f, staging / f.name)
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)


def install_binary_atomically(built: Path, dest: Path) -> None:
    """Put one freshly built binary at ``dest`` (a file) with an atomic rename.

    For a directory shared by several binaries built one at a time (Flux's two controllers).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".partial-{dest.name}-")
    os.close(fd)
    shutil.copy2(built, name)
    Path(name).replace(dest)


def build_kubernetes() -> Path:
    """Return the directory holding the pinned Kubernetes binaries, building them when missing."""
    if _all_present(K8S_BIN, K8S_COMMANDS):
        progress(f"kubernetes v{K8S_VERSION}: cached in {K8S_BIN}")
        return K8S_BIN
    started = time.monotonic()
    minor = K8S_VERSION.split(".")[1]
    staging_version = f"v0.{K8S_VERSION.split('.', 1)[1]}"
    with tempfile.TemporaryDirectory(prefix="kloop-k8sbuild-") as tmp:
        work = Path(tmp)
        log = K8S_BIN.parent / "build.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        progress(f"kubernetes v{K8S_VERSION}: resolving modules (log: {log})")
        run_go(["go", "mod", "init", "local/k8sbuild"], work, log)
        info = json.loads(
            run_go(
                ["go", "mod", "download", "-json", f"k8s.io/kubernetes@v{K8S_VERSION}"], work, log
            )
        )
        kube_gomod = Path(info["GoMod"]).read_text()
        go_line = re.search(r"^go (\S+)", kube_gomod, re.MULTILINE)
        if go_line:
            run_go(["go", "mod", "edit", f"-go={go_line.group(1)}"], work, log)
        for godebug in re.findall(r"^godebug (\S+)", kube_gomod, re.MULTILINE):
            run_go(["go", "mod", "edit", f"-godebug={godebug}"], work, log)
        for module in _staging_modules(kube_gomod):
            run_go(
                ["go", "mod", "edit", f"-replace={module}={module}@{staging_version}"], work, log
            )
        pkgs = [f"k8s.io/kubernetes/cmd/{c}@v{K8S_VERSION}" for c in K8S_COMMANDS]
        run_go(["go", "get", *pkgs], work, log)
        ldflags = ["-s", "-w"]
        stamp = {
            "gitVersion": f"v{K8S_VERSION}",
            "gitMajor": "1",
            "gitMinor": minor,
            "gitTreeState": "clean",
            "buildDate": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        for key, value in stamp.items():
            ldflags += [f"-X=k8s.io/component-base/version.{key}={value}"]
            ldflags += [f"-X=k8s.io/client-go/pkg/version.{key}={value}"]
        out = work / "bin"
        out.mkdir()
        for i, command in enumerate(K8S_COMMANDS, 1):
            t0 = time.monotonic()
            progress(f"kubernetes v{K8S_VERSION}: building {command} ({i}/{len(K8S_COMMANDS)})")
            run_go(
                [
                    "go",
                    "build",
                    "-trimpath",
                    "-ldflags",
                    " ".join(ldflags),
                    "-o",
                    str(out / command),
                    f"k8s.io/kubernetes/cmd/{command}",
                ],
                work,
                log,
            )
            progress(f"  {command} built in {time.monotonic() - t0:.0f}s")
        install_atomically(out, K8S_BIN)
    progress(f"kubernetes v{K8S_VERSION}: built in {time.monotonic() - started:.0f}s")
    return K8S_BIN


def build_etcd() -> Path:
    """Return the directory holding the pinned etcd and etcdctl, building them when missing."""
    names = ["etcd", "etcdctl"]
    if _all_present(ETCD_BIN, names):
        progress(f"etcd v{ETCD_VERSION}: cached in {ETCD_BIN}")
        return ETCD_BIN
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kloop-etcdbuild-") as tmp:
        work = Path(tmp)
        log = ETCD_BIN.parent / "build.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        progress(f"etcd v{ETCD_VERSION}: resolving modules (log: {log})")
        run_go(["go", "mod", "init", "local/etcdbuild"], work, log)
        run_go(
            [
                "go",
                "get",
                f"go.etcd.io/etcd/server/v3@v{ETCD_VERSION}",
                f"go.etcd.io/etcd/etcdctl/v3@v{ETCD_VERSION}",
            ],
            work,
            log,
        )
        out = work / "bin"
        out.mkdir()
        progress(f"etcd v{ETCD_VERSION}: building etcd and etcdctl")
        run_go(
            [
                "go",
                "build",
                "-trimpath",
                "-ldflags",
                "-s -w",
                "-o",
                str(out / "etcd"),
                "go.etcd.io/etcd/server/v3",
            ],
            work,
            log,
        )
        run_go(
            [
                "go",
                "build",
                "-trimpath",
                "-ldflags",
                "-s -w",
                "-o",
                str(out / "etcdctl"),
                "go.etcd.io/etcd/etcdctl/v3",
            ],
            work,
            log,
        )
        install_atomically(out, ETCD_BIN)
    progress(f"etcd v{ETCD_VERSION}: built in {time.monotonic() - started:.0f}s")
    return ETCD_BIN


def kubernetes_module_dir() -> Path:
    """The unpacked k8s.io/kubernetes module (holds build/pause/linux/pause.c)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_go(["go", "mod", "init", "local/x"], Path(tmp))
        info = json.loads(
            run_go(
                ["go", "mod", "download", "-json", f"k8s.io/kubernetes@v{K8S_VERSION}"], Path(tmp)
            )
        )
    return Path(info["Dir"])


if __name__ == "__main__":
    build_etcd()
    build_kubernetes()
