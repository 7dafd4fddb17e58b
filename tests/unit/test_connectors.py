"""Connectors in the decision core: checked before a stage's first pod, handed to allowed roles."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from kloop.adapters.pods import render_pod
from kloop.api.looprun import LoopRunSpec, LoopRunStatus, Phase
from kloop.cli.render import connectors_text
from kloop.core.connectors import env_name, header_problems, pod_connectors, shown_tools
from kloop.core.model import (
    LOCAL_CLUSTER,
    CheckConnector,
    ConnectorOutcome,
    CreatePod,
    PodRequest,
    RecordEvent,
    Role,
    SecretEnv,
)
from tests.unit.builders import (
    Simulation,
    checker_pod,
    created,
    loop_spec,
    maker_ok,
    maker_pod,
    verdict,
    with_teardown,
)

STAGE = "default"
URL = "http://10.88.0.1:8931/mcp"
TRACKER = {
    "name": "tracker",
    "mcp": {"url": URL, "headersSecretRef": {"name": "tracker-auth"}},
    "tools": ["search_issues"],
    "roles": ["maker", "teardown"],
}
FOUND = ConnectorOutcome(
    server_name="tracker-test",
    server_version="1.2.3",
    protocol_version="2025-11-25",
    tools=("create_issue", "search_issues"),
    headers=("Authorization",),
)


def connector(**overrides: Any) -> dict[str, Any]:
    return {**TRACKER, **overrides}


def checks(sim: Simulation) -> list[CheckConnector]:
    assert sim.last is not None
    return [a for a in sim.last.actions if isinstance(a, CheckConnector)]


def events(sim: Simulation, reason: str) -> list[RecordEvent]:
    assert sim.last is not None
    return [a for a in sim.last.actions if isinstance(a, RecordEvent) and a.reason == reason]


def pod(sim: Simulation, name: str) -> PodRequest:
    assert sim.last is not None
    return next(a.pod for a in sim.last.actions if isinstance(a, CreatePod) and a.pod.name == name)


def test_no_pod_starts_until_every_connector_answered() -> None:
    other = {"name": "db", "mcp": {"url": "http://10.88.0.1:9000/mcp"}}
    sim = Simulation(loop_spec(connectors=[connector(), other]))
    d = sim.step()
    assert created(d) == []
    assert checks(sim) == [CheckConnector(STAGE, "tracker"), CheckConnector(STAGE, "db")]
    assert d.status.phase is Phase.RUNNING
    assert "checking connector(s) tracker, db" in (d.status.message or "")
    sim.kwargs["connectors"] = {(STAGE, "tracker"): FOUND}
    d = sim.step()
    assert created(d) == [], "db has not answered yet"
    assert checks(sim) == [CheckConnector(STAGE, "db")], "tracker is not asked again"
    sim.kwargs["connectors"][(STAGE, "db")] = ConnectorOutcome(server_name="db")
    d = sim.step()
    assert created(d) == [maker_pod(1)]
    assert checks(sim) == []


def test_found_servers_and_tools_are_recorded_without_header_values() -> None:
    sim = Simulation(loop_spec(connectors=[connector()]), connectors={(STAGE, "tracker"): FOUND})
    d = sim.step()
    (check,) = d.status.connectors
    assert (check.name, check.stage, check.ready) == ("tracker", STAGE, True)
    assert (check.server_name, check.server_version, check.protocol_version) == (
        "tracker-test",
        "1.2.3",
        "2025-11-25",
    )
    assert check.tools == ["search_issues", "create_issue"], "required tools first"
    assert (check.tool_count, check.headers, check.message) == (2, ["Authorization"], None)
    (ready,) = events(sim, "ConnectorsReady")
    assert "tracker: tracker-test (MCP 2025-11-25, 2 tools)" in ready.message


def test_a_server_that_is_down_halts_the_run_before_any_pod() -> None:
    down = ConnectorOutcome(headers=("Authorization",), error="unreachable: ConnectError")
    sim = Simulation(with_teardown(connectors=[connector(roles=["maker"])]))
    sim.step()
    sim.kwargs["connectors"] = {(STAGE, "tracker"): down}
    d = sim.step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "ConnectorUnavailable")
    assert d.status.message == f"connector 'tracker' ({URL}): unreachable: ConnectError"
    assert not [n for n in sim.created if "maker" in n or "check" in n]
    assert d.status.connectors[0].ready is False
    assert d.status.connectors[0].message == d.status.message
    (event,) = events(sim, "ConnectorUnavailable")
    assert event.type == "Warning" and "'tracker'" in event.message
    stalled = {c.type: c for c in d.status.conditions}["Stalled"]
    assert (stalled.status, stalled.reason) == ("True", "ConnectorUnavailable")


def test_a_missing_tool_halts_the_run_naming_the_tool() -> None:
    outcome = ConnectorOutcome(server_name="tracker-test", tools=("create_issue",))
    spec = loop_spec(connectors=[connector(tools=["search_issues", "create_issue"])])
    sim = Simulation(spec, connectors={(STAGE, "tracker"): outcome})
    d = sim.step()
    assert created(d) == []
    assert d.status.halt_reason == "ConnectorUnavailable"
    assert "tool(s) search_issues not found on 'tracker-test'" in (d.status.message or "")
    assert "(1 listed: create_issue)" in (d.status.message or "")


def test_the_maker_gets_mcp_json_with_header_variables_only() -> None:
    sim = Simulation(loop_spec(connectors=[connector()]), connectors={(STAGE, "tracker"): FOUND})
    sim.step()
    maker = pod(sim, maker_pod(1))
    assert json.loads(maker.files["mcp.json"]) == {
        "mcpServers": {
            "tracker": {
                "type": "http",
                "url": URL,
                "headers": {"Authorization": "${KLOOP_MCP_TRACKER_AUTHORIZATION}"},
            }
        }
    }
    assert maker.secret_env == (
        SecretEnv("KLOOP_MCP_TRACKER_AUTHORIZATION", "tracker-auth", "Authorization"),
    )


def test_a_role_not_listed_gets_no_mcp_json_and_no_header_variables() -> None:
    spec = with_teardown(connectors=[connector(roles=["checker"])], budget={"maxIterations": 1})
    sim = Simulation(spec, connectors={(STAGE, "tracker"): FOUND})
    sim.step()
    maker = pod(sim, maker_pod(1))
    assert "mcp.json" not in maker.files and maker.secret_env == ()
    sim.finish(maker_pod(1), maker_ok())
    checker = pod(sim, checker_pod(1))
    assert "tracker" in json.loads(checker.files["mcp.json"])["mcpServers"]
    d = sim.finish(checker_pod(1), verdict("fail", "no"))
    teardown = next(a.pod for a in d.actions if isinstance(a, CreatePod))
    assert teardown.role is Role.TEARDOWN
    assert "mcp.json" not in teardown.files and teardown.secret_env == ()


def test_the_teardown_gets_the_connectors_of_its_role() -> None:
    spec = with_teardown(connectors=[connector()], budget={"maxIterations": 1})
    sim = Simulation(spec, connectors={(STAGE, "tracker"): FOUND})
    sim.step()
    sim.finish(maker_pod(1), maker_ok())
    d = sim.finish(checker_pod(1), verdict("fail", "no"))
    teardown = next(a.pod for a in d.actions if isinstance(a, CreatePod))
    assert teardown.role is Role.TEARDOWN and "mcp.json" in teardown.files


def test_each_stage_checks_its_connectors_again_after_its_approval() -> None:
    stages = [
        {"name": "a", "clusters": ["local"]},
        {"name": "b", "clusters": ["local"], "requireApproval": True},
    ]
    sim = Simulation(
        loop_spec(stages=stages, connectors=[connector()]), connectors={("a", "tracker"): FOUND}
    )
    sim.step()
    sim.finish("r-s0-local-i1-maker", maker_ok())
    d = sim.finish("r-s0-local-i1-check-tests", verdict("pass"))
    assert d.status.phase is Phase.AWAITING_APPROVAL
    assert checks(sim) == [], "not checked while the stage waits for its approval"
    sim.kwargs["approvals"] = {"b": "alice"}
    d = sim.step()
    assert created(d) == [] and checks(sim) == [CheckConnector("b", "tracker")]
    sim.kwargs["connectors"][("b", "tracker")] = ConnectorOutcome(tools=())
    d = sim.step()
    assert created(d) == [], "stage b's check found the tool gone"
    assert d.status.halt_reason == "ConnectorUnavailable"
    assert d.status.connectors[0].stage == "b"


def test_a_loop_without_connectors_starts_at_once() -> None:
    sim = Simulation(loop_spec())
    d = sim.step()
    assert created(d) == [maker_pod(1)] and checks(sim) == []
    assert d.status.connectors == []


def test_headers_the_transport_sets_or_that_collide_are_refused() -> None:
    problems = header_problems("tracker", ("Host", "X-Key", "X_Key", "Authorization"))
    assert len(problems) == 2
    assert "'Host'" in problems[0]
    assert "$KLOOP_MCP_TRACKER_X_KEY" in problems[1]
    sim = Simulation(
        loop_spec(connectors=[connector()]),
        connectors={
            (STAGE, "tracker"): ConnectorOutcome(tools=("search_issues",), headers=("Host",))
        },
    )
    d = sim.step()
    assert d.status.halt_reason == "ConnectorUnavailable" and "'Host'" in (d.status.message or "")


def test_variable_names_are_upper_case_with_underscores() -> None:
    assert env_name("my-tracker", "X-Api.Key") == "KLOOP_MCP_MY_TRACKER_X_API_KEY"


def test_status_keeps_a_bounded_list_of_tools() -> None:
    found = tuple(f"t{i}" for i in range(100))
    shown = shown_tools(["t99"], found)
    assert len(shown) == 32 and shown[0] == "t99"


def test_a_pod_placed_in_a_target_cluster_gets_no_connectors() -> None:
    spec = loop_spec(connectors=[connector(roles=["checker"])])
    status = LoopRunStatus.model_validate(
        {"connectors": [{"name": "tracker", "stage": STAGE, "checkedAt": "t", "ready": True}]}
    )
    here = PodRequest("p", Role.CHECKER, 1, STAGE, LOCAL_CLUSTER, checker="tests")
    assert pod_connectors(spec, status, here)[0] is not None
    there = PodRequest("p", Role.CHECKER, 1, STAGE, "prod", checker="tests", in_target=True)
    assert pod_connectors(spec, status, there) == (None, ())


def test_the_pod_takes_header_variables_from_the_secret_by_reference() -> None:
    spec = loop_spec(connectors=[connector()])
    sim = Simulation(spec, connectors={(STAGE, "tracker"): FOUND})
    sim.step()
    run = {"metadata": {"name": "r", "namespace": "team", "uid": "u-1"}}
    run_spec = LoopRunSpec.model_validate({"loopRef": {"name": "l"}})
    manifest = render_pod(pod(sim, maker_pod(1)), run, "l", spec, run_spec, "l-memory", {})
    env = manifest["spec"]["containers"][0]["env"]
    assert {"name": "KLOOP_MCP_CONFIG", "value": "/kloop/mcp.json"} in env
    assert {
        "name": "KLOOP_MCP_TRACKER_AUTHORIZATION",
        "valueFrom": {"secretKeyRef": {"name": "tracker-auth", "key": "Authorization"}},
    } in env
    mounts = manifest["spec"]["containers"][0]["volumeMounts"]
    assert {
        "name": "kloop-inputs",
        "mountPath": "/kloop/mcp.json",
        "subPath": "mcp.json",
        "readOnly": True,
    } in mounts


def test_describe_shows_what_each_connector_check_found() -> None:
    status = {
        "connectors": [
            {
                "name": "tracker",
                "stage": "default",
                "ready": True,
                "serverName": "t",
                "protocolVersion": "2025-11-25",
                "toolCount": 3,
            },
            {"name": "db", "stage": "default", "ready": False, "message": "unreachable"},
        ]
    }
    assert connectors_text(status) == (
        "tracker: t (MCP 2025-11-25, 3 tools), checked for stage default\n"
        "db: unavailable: unreachable, checked for stage default"
    )
    assert connectors_text({}) is None


def test_connector_names_are_unique_in_a_loop() -> None:
    with pytest.raises(ValidationError, match="connector names must be unique"):
        loop_spec(connectors=[connector(), connector()])


def test_two_connectors_whose_header_variables_clash_halt_the_run() -> None:
    # my-db's X and my's Db-X are both $KLOOP_MCP_MY_DB_X: one server would get the other's value
    mine = connector(name="my", mcp={"url": URL, "headersSecretRef": {"name": "my-auth"}})
    db = connector(name="my-db", mcp={"url": URL, "headersSecretRef": {"name": "db-auth"}})
    sim = Simulation(
        loop_spec(connectors=[mine, db]),
        connectors={
            (STAGE, "my"): replace(FOUND, headers=("Db-X",)),
            (STAGE, "my-db"): replace(FOUND, headers=("X",)),
        },
    )
    d = sim.step()
    assert created(d) == []
    assert d.status.phase is Phase.HALTED and d.status.halt_reason == "ConnectorUnavailable"
    assert "$KLOOP_MCP_MY_DB_X" in (d.status.message or "")
