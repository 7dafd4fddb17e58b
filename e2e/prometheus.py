"""Prometheus's own tools for the tests: promtool, and a real server on loopback.

Both come from Debian's ``prometheus`` package, installed when missing (no binary download).
The server is started without the package's service: its own config, a free 127.0.0.1 port and
a throw-away storage directory.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from e2e.cluster.debian import ensure_debian
from e2e.cluster.local import say
from e2e.procs import free_port, log_tail, stop_process

PROMTOOL = Path("/usr/bin/promtool")
PROMETHEUS = Path("/usr/bin/prometheus")
PACKAGES = {"prometheus": str(PROMETHEUS)}  # promtool comes with it
SERVICES = ("prometheus", "prometheus-node-exporter")  # the exporter is only a Recommends


def ensure_prometheus() -> None:
    """Install Debian's ``prometheus`` package when promtool or the server is missing.

    The package's postinst starts its daemons where systemd runs; they would listen on :9090
    (and the exporter on :9100) on every interface, so they are stopped and disabled at once:
    the tests start their own server on loopback.
    """
    if "prometheus" in ensure_debian(PACKAGES, say):
        _disable_package_services()


def _disable_package_services() -> None:
    """``systemctl disable --now`` the package's units, where systemd runs; failures ignored."""
    if shutil.which("systemctl") is None or not Path("/run/systemd/system").is_dir():
        return  # no systemd (a container): the postinst started nothing
    for unit in SERVICES:
        subprocess.run(["systemctl", "disable", "--now", unit], capture_output=True, check=False)
    say(f"stopped and disabled {' and '.join(SERVICES)} (the tests run their own on loopback)")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool (installing it first when needed); the caller checks the return code."""
    ensure_prometheus()
    return subprocess.run(
        [str(PROMTOOL), *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


class PrometheusServer:
    """A Prometheus scraping ``targets`` every second as job ``kloop``, with ``rules`` loaded."""

    def __init__(self, workdir: Path, targets: list[str], rules: Path | None = None) -> None:
        self.workdir = workdir
        self.targets = targets
        self.rules = rules
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        """Start the server; returns once it answers ready."""
        ensure_prometheus()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "kloop", "static_configs": [{"targets": self.targets}]}
            ],
        }
        if self.rules is not None:
            config["rule_files"] = [str(self.rules)]
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited at once:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"prometheus not ready within {timeout}s:\n{self.log_tail()}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector; a PromQL error raises with Prometheus's words."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = answer.json()
        if body.get("status") != "success":
            raise AssertionError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query_rules(self) -> list[dict[str, Any]]:
        """The rules the server loaded, with their health after evaluation."""
        body = httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]

    def stop(self) -> None:
        """SIGTERM and wait (its storage goes with the test's tmp directory)."""
        stop_process(self.proc)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


SELECTOR = re.compile(r"\b(kloop_[a-z0-9_]+|up)\b(\{[^}]*\})?")
THRESHOLD = re.compile(r"^(?P<inner>.+?)\s*(?:>=|<=|>|<|==|!=)\s*[0-9][0-9.\s*+]*$", re.S)


def selectors(expr: str) -> list[str]:
    """The metric selectors (name and matchers) an expression reads, in order, once each."""
    found = [m.group(0) for m in SELECTOR.finditer(expr)]
    return list(dict.fromkeys(found))


def without_threshold(expr: str) -> str | None:
    """An alert's expression without its final comparison with a number, if it ends with one.

    None for an expression joined with or/and/unless: its last comparison is not the whole one.
    """
    flat = " ".join(expr.split())
    if re.search(r"\s(or|and|unless)\s", flat):
        return None
    match = THRESHOLD.match(flat)
    return match.group("inner") if match else None
