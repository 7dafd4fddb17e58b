"""MCP connectors end to end: a real MCP server (the official SDK) on the pods' bridge address.

The operator checks it (initialize + tools/list) before the run's first pod and records what it
found; the maker reads /kloop/mcp.json and calls the server with the header variable the file
names; the checker's role is not listed, so it gets neither. A server that is down and a missing
tool each halt the run with ConnectorUnavailable before any pod. The header's value (the
Secret's) appears in no status, Event, input ConfigMap, pod spec or operator log line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.loops import create_loop, events_for, get_run, run_pods, start_run, wait_finished
from e2e.mcp_server import free_port, mcp_server
from e2e.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

BRIDGE = "10.88.0.1"  # the host on the pods' bridge (e2e/cluster/pki.py NODE_IP)
SECRET_VALUE = "Bearer kloop-e2e-9d41c7b2"
TOOLS = ["search_issues", "create_issue"]
IMAGE = "kloop.local/busybox:1.0"

MAKER = r"""
set -e
url=$(sed -n 's/.*"url": "\([^"]*\)".*/\1/p' /kloop/mcp.json)
init='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"maker","version":"1"}}}'
answer=$(wget -q -O - --header "Authorization: $KLOOP_MCP_TRACKER_AUTHORIZATION" \
  --header "Content-Type: application/json" --header "Accept: application/json, text/event-stream" \
  --post-data "$init" "$url" || echo failed)
case "$answer" in *kloop-test-tracker*) reached=yes ;; *) reached=no ;; esac
config=$(tr -d '\n' < /kloop/mcp.json | sed 's/\\/\\\\/g; s/"/\\"/g')
printf '{"v":1,"outcome":"changed","summary":"reached=%s config=%s"}' "$reached" "$config" \
  > /dev/termination-log
"""

CHECKER = r"""
if [ -e /kloop/mcp.json ] || env | grep -q '^KLOOP_MCP_'; then
  printf '{"v":1,"verdict":"fail","reasons":["the checker got a connector"]}' > /dev/termination-log
else
  printf '{"v":1,"verdict":"pass","reasons":["no mcp.json, no KLOOP_MCP_ variable"]}' \
    > /dev/termination-log
fi
"""


def connector_loop(url: str, tools: list[str]) -> dict[str, Any]:
    def template(name: str, script: str) -> dict[str, Any]:
        container = {
            "name": name,
            "image": IMAGE,
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", script],
        }
        return {"spec": {"containers": [container]}}

    return {
        "apiVersion": "kloop.dev/v1alpha1",
        "kind": "Loop",
        "metadata": {"name": "tracker"},
        "spec": {
            "goal": "Use the tracker.",
            "maker": {"timeoutSeconds": 120, "template": template("agent", MAKER)},
            "checkers": [{"name": "no-connector", "template": template("check", CHECKER)}],
            "budget": {"maxIterations": 1},
            "connectors": [
                {
                    "name": "tracker",
                    "mcp": {"url": url, "headersSecretRef": {"name": "tracker-auth"}},
                    "tools": tools,
                    "roles": ["maker"],
                }
            ],
        },
    }


@pytest.fixture
def secret(api_client: client.ApiClient, namespace: str) -> None:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name="tracker-auth"),
        string_data={"Authorization": SECRET_VALUE},
    )
    client.CoreV1Api(api_client).create_namespaced_secret(namespace, body)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The MCP server on the bridge, requiring the Secret's Authorization; (URL, its log)."""
    log = tmp_path / "mcp-server.log"
    with mcp_server(BRIDGE, log, TOOLS, ("Authorization", SECRET_VALUE)) as url:
        yield url, log


def assert_secret_nowhere(
    api: client.ApiClient, namespace: str, run: dict[str, Any], operator: OperatorProcess
) -> None:
    """The header value is in the Secret only: not in status, Events, inputs, pods or the log."""
    assert SECRET_VALUE not in json.dumps(run)
    assert all(SECRET_VALUE not in (e.message or "") for e in events_for(api, namespace, "run"))
    core = client.CoreV1Api(api)
    for cm in core.list_namespaced_config_map(namespace).items:
        assert SECRET_VALUE not in json.dumps(cm.data or {}), cm.metadata.name
    for pod in run_pods(api, namespace, "run"):
        assert SECRET_VALUE not in json.dumps(api.sanitize_for_serialization(pod.spec))
    assert isinstance(operator, OperatorProcess)
    assert SECRET_VALUE not in operator.log_path.read_text()
    assert "kloop-e2e-9d41c7b2" not in operator.log_path.read_text()


def test_tools_land_in_status_and_the_maker_calls_the_server_through_mcp_json(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    secret: None,
    server: tuple[str, Path],
) -> None:
    url, server_log = server
    create_loop(api_client, namespace, connector_loop(url, ["search_issues"]))
    start_run(api_client, namespace, "tracker", "run")
    run = wait_finished(api_client, namespace, "run", timeout=240)
    status = run["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    (check,) = status["connectors"]
    assert check["ready"] is True and check["stage"] == "default"
    assert check["serverName"] == "kloop-test-tracker"
    assert check["protocolVersion"].startswith("20")
    assert check["tools"][0] == "search_issues" and set(check["tools"]) == set(TOOLS)
    assert check["headers"] == ["Authorization"]

    record = status["iterations"][-1]
    summary = record["maker"]["summary"]
    assert "reached=yes" in summary, summary
    config = json.loads(summary.split("config=", 1)[1])
    assert config == {
        "mcpServers": {
            "tracker": {
                "type": "http",
                "url": url,
                "headers": {"Authorization": "${KLOOP_MCP_TRACKER_AUTHORIZATION}"},
            }
        }
    }
    checker = next(c for c in record["checkers"] if c["name"] == "no-connector")
    assert checker["verdict"] == "pass", checker["reasons"]

    reasons = [e.reason for e in events_for(api_client, namespace, "run")]
    assert "ConnectorsReady" in reasons
    seen = [line for line in server_log.read_text().splitlines() if line.startswith("POST")]
    assert seen and all("header-ok=True" in line for line in seen), seen
    assert_secret_nowhere(api_client, namespace, get_run(api_client, namespace, "run"), operator)


@pytest.mark.parametrize("problem", ["down", "missing-tool"])
def test_an_unusable_connector_halts_the_run_before_any_pod(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    secret: None,
    server: tuple[str, Path],
    problem: str,
) -> None:
    url, _ = server
    tools = ["search_issues"]
    if problem == "down":
        url = f"http://{BRIDGE}:{free_port(BRIDGE)}/mcp"  # nothing listens there
    else:
        tools = ["search_issues", "delete_everything"]
    create_loop(api_client, namespace, connector_loop(url, tools))
    start_run(api_client, namespace, "tracker", "run")
    run = wait_finished(api_client, namespace, "run", timeout=120)
    status = run["status"]
    assert (status["phase"], status["haltReason"]) == ("Halted", "ConnectorUnavailable")
    message = status["message"]
    assert message.startswith(f"connector 'tracker' ({url}):"), message
    if problem == "down":
        assert "unreachable after 3 attempts" in message, message
    else:
        assert "delete_everything not found on 'kloop-test-tracker'" in message, message
        assert status["connectors"][0]["serverName"] == "kloop-test-tracker"
    assert status["connectors"][0]["ready"] is False
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "ConnectorUnavailable"
    events = events_for(api_client, namespace, "run")
    halted = [e for e in events if e.reason == "ConnectorUnavailable"]
    assert halted and halted[0].type == "Warning" and "'tracker'" in halted[0].message
    assert status.get("iteration", 0) == 0 and not status.get("iterations"), "no maker asked for"
    assert run_pods(api_client, namespace, "run") == []
    assert_secret_nowhere(api_client, namespace, run, operator)
