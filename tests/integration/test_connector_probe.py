"""The connector handshake against a real MCP server process, on loopback, without a cluster.

The e2e test (e2e/tests/test_connectors.py) runs it from the operator for a LoopRun; these check
the egress guard's hold on the SDK's HTTP client, which a run cannot show: a refused address is
never connected to, a redirect to another origin is not followed, a server that never answers
and one that answers too much are cut off, and header values appear in no outcome or log line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from e2e.mcp_server import mcp_server

from kloop.adapters.connectors import probe
from kloop.adapters.egress import EgressGuard
from kloop.api.loop import Connector
from kloop.core.connectors import assess

pytestmark = pytest.mark.integration

LOOPBACK = EgressGuard((ipaddress.ip_network("127.0.0.0/8"),))
SECRET = "Bearer kloop-test-3f9a1c"
HEADERS = {"Authorization": SECRET}


def connector(url: str, tools: list[str] | None = None) -> Connector:
    return Connector.model_validate(
        {"name": "tracker", "mcp": {"url": url}, "tools": tools or ["search_issues"]}
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real MCP server on loopback that requires the Authorization header; (URL, its log)."""
    log = tmp_path / "mcp.log"
    tools = ["search_issues", "create_issue"]
    with mcp_server("127.0.0.1", log, tools, ("Authorization", SECRET)) as url:
        yield url, log


def requests_seen(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith(("POST", "GET"))]


def serve(handler: type[BaseHTTPRequestHandler]) -> tuple[HTTPServer, str]:
    http = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    return http, f"http://127.0.0.1:{http.server_port}/mcp"


def test_the_handshake_sends_the_secret_header_and_lists_the_tools(
    server: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    url, log = server
    caplog.set_level(logging.DEBUG)
    outcome = asyncio.run(probe(connector(url), HEADERS, LOOPBACK))
    assert outcome.error is None
    assert (outcome.server_name, outcome.server_version) == ("kloop-test-tracker", "1.0.0")
    assert outcome.protocol_version and outcome.protocol_version.startswith("20")
    assert set(outcome.tools) == {"search_issues", "create_issue"}
    assert outcome.headers == ("Authorization",)
    seen = requests_seen(log)
    assert seen and all("header-ok=True" in line for line in seen), seen
    assert SECRET not in caplog.text and "kloop-test-3f9a1c" not in caplog.text


def test_a_wrong_header_fails_the_handshake_without_showing_the_value(
    server: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = server
    caplog.set_level(logging.DEBUG)
    wrong = {"Authorization": "Bearer wrong-value-77"}
    outcome = asyncio.run(probe(connector(url), wrong, LOOPBACK))
    assert outcome.error == "the server answered HTTP 401 (check the connector's headersSecretRef)"
    assert "wrong-value-77" not in caplog.text


def test_loopback_is_refused_without_an_allowance_and_never_contacted(
    server: tuple[str, Path],
) -> None:
    url, log = server
    outcome = asyncio.run(probe(connector(url), HEADERS, EgressGuard()))
    assert outcome.error is not None and "refused by the egress guard" in outcome.error
    assert "loopback" in outcome.error
    assert requests_seen(log) == []


def test_a_redirect_to_another_origin_is_not_followed(server: tuple[str, Path]) -> None:
    url, log = server

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(307)
            self.send_header("Location", url)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST  # noqa: N815

        def log_message(self, *_: Any) -> None:
            pass

    http, redirecting = serve(Redirect)
    try:
        outcome = asyncio.run(probe(connector(redirecting), HEADERS, LOOPBACK))
    finally:
        http.shutdown()
    assert outcome.error is not None and outcome.tools == ()
    assert f"Redirect to {url} not followed" in outcome.error
    assert requests_seen(log) == [], "the real server behind the redirect was never asked"


def test_a_server_that_never_answers_is_cut_off_at_the_deadline() -> None:
    quiet = socket.socket()
    quiet.bind(("127.0.0.1", 0))
    quiet.listen(8)  # accepts connections (the kernel does), never answers
    url = f"http://127.0.0.1:{quiet.getsockname()[1]}/mcp"
    try:
        started = time.monotonic()
        outcome = asyncio.run(probe(connector(url), HEADERS, LOOPBACK, timeout=2))
        took = time.monotonic() - started
    finally:
        quiet.close()
    assert outcome.error == "no answer to the MCP handshake within 2s"
    assert took < 5


def test_an_answer_over_the_size_cap_is_not_read() -> None:
    class Huge(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            chunk = b" " * 65536
            try:
                for _ in range(40):  # 2.5 MiB of whitespace, more than the 1 MiB cap
                    self.wfile.write(chunk)
            except OSError:
                pass  # the client stopped reading: that is the point

        def log_message(self, *_: Any) -> None:
            pass

    http, url = serve(Huge)
    try:
        outcome = asyncio.run(probe(connector(url), HEADERS, LOOPBACK, timeout=5))
    finally:
        http.shutdown()
    assert (
        outcome.error == "refused by the egress guard: answer larger than 1048576 bytes, not read"
    )


def test_a_server_that_is_down_is_unreachable_after_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = asyncio.run(probe(connector(f"http://127.0.0.1:{port}/mcp"), {}, LOOPBACK))
    assert outcome.error is not None and outcome.error.startswith("unreachable after 3 attempts")


def test_headers_the_transport_sets_are_never_sent_from_the_secret() -> None:
    seen: list[str] = []

    class Record(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            seen.append(str(self.headers.get("Host")))
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST  # noqa: N815

        def log_message(self, *_: Any) -> None:
            pass

    http, url = serve(Record)
    try:
        # a Host from the Secret would reach another virtual host behind the checked address
        outcome = asyncio.run(
            probe(connector(url), {"Host": "internal.example", **HEADERS}, LOOPBACK)
        )
    finally:
        http.shutdown()
    assert seen == [], "no request left with the Secret's Host header"
    assert outcome.headers == ("Authorization", "Host") and outcome.tools == ()
    problem = assess(connector(url), outcome)
    assert problem is not None and "'Host' is set by the HTTP client" in problem


def test_a_header_secret_with_a_non_ascii_or_control_character_is_refused_unquoted(
    cluster: Path, kloop_crds: list[str], namespace: str, api_client: Any
) -> None:
    from kubernetes import client

    from kloop.adapters.connectors import ConnectorError, read_headers
    from kloop.adapters.kube import Kube

    connector = Connector.model_validate(
        {"name": "t", "mcp": {"url": "http://10.88.0.1:1/mcp", "headersSecretRef": {"name": "h"}}}
    )
    core = client.CoreV1Api(api_client)
    kube = Kube(api_client)
    for value in ("Bearer zq\u00e9x7", "Bearer zqx7\n"):
        core.delete_collection_namespaced_secret(namespace)
        core.create_namespaced_secret(
            namespace,
            {"metadata": {"name": "h"}, "stringData": {"Authorization": value}},
        )
        with pytest.raises(ConnectorError) as refused:
            asyncio.run(read_headers(kube, namespace, connector))
        assert "not a header value" in str(refused.value)
        assert "zq" not in str(refused.value), "the value is never quoted"
    core.replace_namespaced_secret(
        "h", namespace, {"metadata": {"name": "h"}, "stringData": {"Authorization": "Bearer ok"}}
    )
    assert asyncio.run(read_headers(kube, namespace, connector)) == {"Authorization": "Bearer ok"}
