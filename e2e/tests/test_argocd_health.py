"""Argo CD health for Loops and LoopRuns: the Lua checks run live on real objects at each phase.

Every phase a run can be in is produced on the real cluster (with the real operator), the Lua
check runs on the live object with lua5.1, and the objects are what
tests/fixtures/argocd/*.json hold: ``KLOOP_CAPTURE_FIXTURES=1`` rewrites those files from this run
(tests/integration/test_argocd_health.py checks the same scripts against them without a cluster).
"""

from __future__ import annotations

import copy
import json
import os
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.gitops.argocd_health import LOOP_SCRIPT, LOOPRUN_SCRIPT, ensure_lua, run_health
from e2e.helpers import wait_for
from e2e.loops import GROUP, VERSION, create_loop, get_run, greeting_loop, wait_finished
from e2e.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "argocd"
Json = dict[str, Any]

INCONCLUSIVE_CHECKER = {
    "name": "unsure",
    "kind": "pod",
    "template": {
        "spec": {
            "containers": [
                {
                    "name": "check",
                    "image": "kloop.local/busybox:1.0",
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c"],
                    "args": [
                        'printf \'{"v":1,"verdict":"inconclusive","reasons":'
                        '["cannot tell"]}\' > /dev/termination-log'
                    ],
                }
            ]
        }
    },
}


def _loop(name: str, **spec: Any) -> Json:
    loop = greeting_loop()
    loop["metadata"]["name"] = name
    loop["spec"].update(spec)
    loop["spec"].pop("teardown", None)  # a teardown only delays the final phase here
    return loop


def _run(api: client.ApiClient, namespace: str, name: str, loop: str) -> Json:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoopRun",
        "metadata": {"name": name},
        "spec": {"loopRef": {"name": loop}},
    }
    created: Json = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "loopruns", body
    )
    return created


def _get_loop(api: client.ApiClient, namespace: str, name: str) -> Json:
    loop: Json = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "loops", name
    )
    return loop


def _phase_is(api: client.ApiClient, namespace: str, run: str, phase: str) -> Json | None:
    obj = get_run(api, namespace, run)
    return obj if (obj.get("status") or {}).get("phase") == phase else None


def _with_run(api: client.ApiClient, namespace: str, name: str, phase: str) -> Json | None:
    """The Loop once its columns show its newest run in ``phase`` (written after the run's pass)."""
    obj = _get_loop(api, namespace, name)
    status = obj.get("status") or {}
    return obj if status.get("lastRun") and status.get("phase") == phase else None


def _fixture(obj: Json) -> Json:
    """The object as stored: without managedFields, in namespace ``demo`` (stable diffs)."""
    kept = copy.deepcopy(obj)
    kept["metadata"].pop("managedFields", None)
    text = json.dumps(kept, indent=2, sort_keys=True).replace(obj["metadata"]["namespace"], "demo")
    parsed: Json = json.loads(text)
    return parsed


def _check(name: str, script: Path, obj: Json, status: str, message: str) -> None:
    health = run_health(script, obj)
    assert health.status == status, (name, health, obj.get("status"))
    assert health.message.startswith(message), (name, health)
    if os.environ.get("KLOOP_CAPTURE_FIXTURES") == "1":
        FIXTURES.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_fixture(obj), indent=2, sort_keys=True) + "\n"
        (FIXTURES / f"{name}.json").write_text(text)


def test_lua_health_matches_every_phase_of_real_runs(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    ensure_lua()
    ns = namespace
    create_loop(api_client, ns, _loop("greeting"))
    create_loop(api_client, ns, _loop("short", budget={"maxIterations": 1}))
    create_loop(
        api_client,
        ns,
        _loop("gated", stages=[{"name": "prod", "clusters": ["local"], "requireApproval": True}]),
    )
    unsure = _loop("unsure")
    unsure["spec"]["checkers"] = [INCONCLUSIVE_CHECKER]
    create_loop(api_client, ns, unsure)
    nowhere = {"name": "none", "clusterSelector": {"matchLabels": {"kloop.dev/none": "x"}}}
    create_loop(api_client, ns, _loop("nowhere", stages=[nowhere]))
    _check("loop-no-run", LOOP_SCRIPT, _get_loop(api_client, ns, "nowhere"), "Healthy", "No run")

    fresh = _run(api_client, ns, "ok", "greeting")  # as the apiserver returns it: no status yet
    _check("looprun-new", LOOPRUN_SCRIPT, fresh, "Progressing", "Waiting for the kloop operator")
    for run, loop in [
        ("halts", "short"),
        ("gated", "gated"),
        ("unsure", "unsure"),
        ("nowhere", "nowhere"),
        ("orphan", "missing"),
    ]:
        _run(api_client, ns, run, loop)

    running = wait_for("a running run", lambda: _phase_is(api_client, ns, "ok", "Running"), 120)
    _check("looprun-running", LOOPRUN_SCRIPT, running, "Progressing", "Running: ")
    orphan = wait_for("the orphan", lambda: _phase_is(api_client, ns, "orphan", "Pending"), 60)
    _check("looprun-pending-loop-missing", LOOPRUN_SCRIPT, orphan, "Degraded", "Pending, stalled")
    gated = wait_for(
        "an approval wait", lambda: _phase_is(api_client, ns, "gated", "AwaitingApproval"), 120
    )
    _check("looprun-awaiting-approval", LOOPRUN_SCRIPT, gated, "Suspended", "Awaiting approval")
    paused = wait_for("a pause", lambda: _phase_is(api_client, ns, "unsure", "Paused"), 180)
    _check("looprun-paused", LOOPRUN_SCRIPT, paused, "Suspended", "Paused: ")
    failed = wait_for("a failure", lambda: _phase_is(api_client, ns, "nowhere", "Failed"), 120)
    _check("looprun-failed", LOOPRUN_SCRIPT, failed, "Degraded", "Failed (InvalidLoop)")
    halted = wait_finished(api_client, ns, "halts", timeout=180)
    _check("looprun-halted", LOOPRUN_SCRIPT, halted, "Degraded", "Halted (MaxIterations)")
    done = wait_finished(api_client, ns, "ok", timeout=240)
    _check("looprun-succeeded", LOOPRUN_SCRIPT, done, "Healthy", "Succeeded")

    for loop, status, message in [
        ("greeting", "Healthy", "Newest run ok: Succeeded"),
        ("short", "Degraded", "Newest run halts: Halted"),
        ("gated", "Suspended", "Newest run gated: AwaitingApproval"),
        ("unsure", "Suspended", "Newest run unsure: Paused"),
    ]:
        phase = message.rsplit(": ", 1)[1]
        obj = wait_for(
            f"loop {loop}'s columns", partial(_with_run, api_client, ns, loop, phase), 30
        )
        _check(f"loop-{loop}", LOOP_SCRIPT, obj, status, message)
