"""Issue 14, defect 1: a hostile oracle server cannot hold a run, flood the operator or redirect it.

A threaded HTTP server on loopback dribbles bytes, answers 50 MB or redirects to another host;
the operator (which the suite allows to reach 127.0.0.0/8) must end each checker with a clear
reason within its ``timeoutSeconds``, keep its RSS under 200 MB, and still act on an abort while
a slow query is in flight. Without the allow flag, a loopback oracle is refused unsent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.loops import (
    GROUP,
    VERSION,
    Json,
    create_loop,
    get_run,
    greeting_loop,
    start_run,
    wait_finished,
)
from e2e.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

RSS_LIMIT_KB = 200 * 1024
DRIP_SECONDS = 2.0  # one byte every DRIP_SECONDS...
DRIP_BYTES = 30  # ...for at most a minute: the server is bounded even if nobody hangs up


@dataclass
class Hits:
    """Requests a server received: path and arrival time (threads append, the test reads)."""

    seen: list[tuple[str, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str) -> None:
        with self.lock:
            self.seen.append((path, time.monotonic()))

    def first(self, prefix: str) -> float | None:
        with self.lock:
            return next((t for p, t in self.seen if p.startswith(prefix)), None)


class _Hostile(BaseHTTPRequestHandler):
    """/drip: headers, then one byte every DRIP_SECONDS; /big: 50 MB; /away: 302 elsewhere."""

    server: _Server

    def do_GET(self) -> None:
        self.server.hits.add(self.path)
        try:
            if self.path.startswith("/drip"):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(DRIP_BYTES))
                self.end_headers()
                for _ in range(DRIP_BYTES):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(DRIP_SECONDS)
            elif self.path.startswith("/big"):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()  # no Content-Length: the client only learns by reading
                chunk = b"0" * 65536
                for _ in range(50 * 1024 * 1024 // len(chunk)):
                    self.wfile.write(chunk)
            elif self.path.startswith("/away"):
                self.send_response(302)
                self.send_header("Location", self.server.elsewhere)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                body = b'{"v": 0.5}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.server.hits.add(f"hangup:{self.path}")  # the operator closed the connection

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hits: Hits
    elsewhere: str


@dataclass
class Hostile:
    """The hostile server's base URL, its hits, and the hits of the host it redirects to."""

    url: str
    hits: Hits
    elsewhere_hits: Hits


def _serve(host: str, elsewhere: str = "") -> tuple[_Server, threading.Thread]:
    server = _Server((host, 0), _Hostile)
    server.hits, server.elsewhere = Hits(), elsewhere
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    # the redirect target is a second loopback address: a request reaching it would be recorded
    other, _ = _serve("127.0.0.2")
    server, _ = _serve("127.0.0.1", f"http://127.0.0.2:{other.server_address[1]}/ok")
    try:
        yield Hostile(f"http://127.0.0.1:{server.server_address[1]}", server.hits, other.hits)
    finally:
        for s in (server, other):
            s.shutdown()
            s.server_close()


def oracle_loop(url: str, timeout_seconds: int) -> Json:
    """One iteration: the demo maker, then only an HTTP oracle; no teardown."""
    loop = greeting_loop()
    loop["spec"]["budget"] = {"maxIterations": 1}
    loop["spec"].pop("teardown", None)
    loop["spec"]["checkers"] = [
        {
            "name": "oracle",
            "kind": "http",
            "http": {
                "url": url,
                "jsonPath": "$.v",
                "passIf": "< 1",
                "timeoutSeconds": timeout_seconds,
            },
        }
    ]
    return loop


class RssWatch:
    """Samples a process's VmRSS (kB) in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.peak = max(self.peak, int(line.split()[1]))
            time.sleep(0.1)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s")


def oracle_record(run: Json) -> Json | None:
    """The oracle's checker record in the run's first iteration, once it has a verdict."""
    iterations = (run.get("status") or {}).get("iterations") or []
    checkers = (iterations[0].get("checkers") or []) if iterations else []
    return next((c for c in checkers if c["name"] == "oracle"), None)


@pytest.mark.parametrize(
    ("path", "verdict", "says", "phase"),
    [
        # an oracle that cannot answer is inconclusive: the stage pauses for a human (issue 15)
        ("/drip", "inconclusive", "no answer within 4s", "Paused"),
        ("/big", "error", "answer larger than 1048576 bytes", "Failed"),
        ("/away", "error", "redirect to another host (http://127.0.0.2:", "Failed"),
    ],
)
def test_trust_1_hostile_oracle_ends_in_time_with_a_clear_reason(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    hostile: Hostile,
    path: str,
    verdict: str,
    says: str,
    phase: str,
) -> None:
    timeout = 4
    create_loop(api_client, namespace, oracle_loop(f"{hostile.url}{path}?token=s3cret", timeout))
    assert operator.proc is not None
    with RssWatch(operator.proc.pid) as rss:
        start_run(api_client, namespace, "greeting", "hostile")
        asked = wait_for("the oracle is queried", lambda: hostile.hits.first(path), 120)
        record = wait_for(
            "the oracle's verdict",
            lambda: oracle_record(get_run(api_client, namespace, "hostile")),
            timeout + 10,
        )
        answered_in = time.monotonic() - asked

        def settled() -> Json | None:
            status: Json = get_run(api_client, namespace, "hostile").get("status") or {}
            return status if status.get("phase") in ("Paused", "Failed", "Halted") else None

        status = wait_for("the run to settle", settled, timeout=30)
    reason = " ".join(record["reasons"])
    assert record["verdict"] == verdict, reason
    assert says in reason
    assert "s3cret" not in reason and "token=REDACTED" in reason
    # the verdict is written within timeoutSeconds, plus the time to see it (0.1s polls, apiserver)
    assert answered_in < timeout + 2, f"verdict {answered_in:.1f}s after the query started"
    assert status["phase"] == phase, status.get("message")
    if verdict == "error":
        assert status["haltReason"] == "OracleRefused"
    assert not hostile.elsewhere_hits.seen, "the redirect to another host was followed"
    assert rss.peak < RSS_LIMIT_KB, f"operator RSS peaked at {rss.peak // 1024} MB"


@pytest.mark.parametrize("slow_teardown", [False, True], ids=["no-teardown", "slow-teardown"])
def test_trust_1_abort_halts_a_run_while_its_oracle_dribbles(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    hostile: Hostile,
    slow_teardown: bool,
) -> None:
    loop = oracle_loop(f"{hostile.url}/drip", 120)
    if slow_teardown:  # the run is over but still tearing down: its query must stop anyway
        loop["spec"]["teardown"] = {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "cleanup",
                            "image": "kloop.local/busybox:1.0",
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["sh", "-c", "sleep 30"],
                        }
                    ]
                }
            }
        }
    create_loop(api_client, namespace, loop)
    start_run(api_client, namespace, "greeting", "slow")
    wait_for("the oracle is queried", lambda: hostile.hits.first("/drip"), 120)
    time.sleep(2 * DRIP_SECONDS)  # in flight, bytes trickling
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "loopruns",
        "slow",
        {"metadata": {"annotations": {"kloop.dev/abort": "yes"}}},
    )

    def halted() -> Json | None:
        status: Json = get_run(api_client, namespace, "slow").get("status") or {}
        return status if status.get("phase") == "Halted" else None

    status = wait_for("the run halts", halted, timeout=10)
    assert status.get("haltReason") == "Aborted", status
    # the run is over, so its query is cancelled: the server sees the connection close
    wait_for("the operator hangs up", lambda: hostile.hits.first("hangup:/drip"), 4 * DRIP_SECONDS)


def test_trust_1_without_the_flag_a_loopback_oracle_is_refused_unsent(
    api_client: client.ApiClient,
    cluster: Path,
    kloop_crds: list[str],
    namespace: str,
    hostile: Hostile,
    tmp_path: Path,
) -> None:
    strict = OperatorProcess(cluster, tmp_path / "operator.log", [namespace])
    strict.start()
    try:
        create_loop(api_client, namespace, oracle_loop(f"{hostile.url}/ok", 5))
        start_run(api_client, namespace, "greeting", "refused")
        status = wait_finished(api_client, namespace, "refused", timeout=120)["status"]
    finally:
        strict.stop()
        print(f"--- operator log (tail) ---\n{strict.log_tail(60)}")
    record = oracle_record({"status": status})
    assert record is not None, status
    reason = " ".join(record["reasons"])
    assert record["verdict"] == "error", reason
    assert "127.0.0.1 is a loopback address" in reason and "--allow-egress-cidr" in reason
    assert (status["phase"], status["haltReason"]) == ("Failed", "OracleRefused")
    assert not hostile.hits.seen, "the refused server received a request"
