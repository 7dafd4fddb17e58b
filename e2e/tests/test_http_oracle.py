"""An HTTP oracle checker graded by the operator itself (httpx), next to a pod checker."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from kubernetes import client

from e2e.loops import create_loop, greeting_loop, start_run, wait_finished
from e2e.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e


class _Metrics(BaseHTTPRequestHandler):
    """Answers like a Prometheus query API: an error rate of 0.003."""

    def do_GET(self) -> None:
        body = json.dumps({"data": {"result": [{"value": [1764072000, "0.003"]}]}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metrics_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/query"
    finally:
        server.shutdown()


@pytest.mark.parametrize(("pass_if", "phase"), [("< 0.01", "Succeeded"), ("< 0.001", "Halted")])
def test_http_oracle_decides_with_the_pod_checker(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    metrics_url: str,
    pass_if: str,
    phase: str,
) -> None:
    loop = greeting_loop()
    loop["spec"]["budget"] = {"maxIterations": 3}
    loop["spec"]["checkers"].append(
        {
            "name": "error-rate",
            "kind": "http",
            "http": {
                "url": metrics_url,
                "jsonPath": "$.data.result[0].value[1]",
                "passIf": pass_if,
            },
        }
    )
    create_loop(api_client, namespace, loop)
    start_run(api_client, namespace, "greeting", "oracle")
    status = wait_finished(api_client, namespace, "oracle")["status"]
    assert status["phase"] == phase, status.get("message")
    last = status["iterations"][-1]["checkers"]
    oracle = next(c for c in last if c["name"] == "error-rate")
    assert "'0.003'" in oracle["reasons"][0]
    assert oracle["verdict"] == ("pass" if phase == "Succeeded" else "fail")
