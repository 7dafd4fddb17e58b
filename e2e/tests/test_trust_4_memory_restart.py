"""Defect 4 of issue 14: a finished run is in memory once, whatever came after it.

However many runs were appended since and however often the operator restarts.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from e2e.helpers import wait_for
from e2e.loops import create_loop, get_run, greeting_loop, memory, start_run, wait_finished
from e2e.operator_process import OperatorProcess
from kloop.api.looprun import IterationRecord
from kloop.core.memory import (
    LOG_KEY,
    RUNS_TRACKED,
    append_entry,
    appended_through,
    data_size,
    memory_entry,
    render_data,
)

pytestmark = pytest.mark.e2e

LATER_RUNS = RUNS_TRACKED + 10


def _later_runs(log: dict[str, Any], loop: str, goal: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The log after LATER_RUNS more runs of one iteration each, appended as the operator does."""
    memory_spec = spec.get("memory") or {}
    keep, max_bytes = memory_spec.get("keepIterations", 10), memory_spec.get("maxBytes", 524288)
    for i in range(LATER_RUNS):
        record = IterationRecord(
            number=1,
            stage="default",
            cluster="local",
            decision="succeed",
            why="every checker passed",
            finished_at="2026-01-01T00:00:00Z",
        )
        entry = memory_entry(f"later-{i:03d}", f"later-uid-{i:03d}", record)
        log = append_entry(log, entry, keep, max_bytes, loop, goal)
    return log


def test_trust_4_a_finished_run_is_not_appended_again_after_the_registry_forgot_it(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    loop = greeting_loop()
    spec, goal = loop["spec"], loop["spec"]["goal"]
    create_loop(api_client, namespace, loop)
    start_run(api_client, namespace, "greeting", "first")
    run = wait_finished(api_client, namespace, "first")
    assert run["status"]["phase"] == "Succeeded", operator.log_tail()
    uid = run["metadata"]["uid"]
    wait_for(
        "the run to record that its iterations are in memory",
        lambda: get_run(api_client, namespace, "first")["status"].get("memoryRecordedThrough") == 3,
        timeout=30,
    )

    core = client.CoreV1Api(api_client)
    cm = core.read_namespaced_config_map("greeting-memory", namespace)
    _, log = memory(api_client, namespace, "greeting")
    assert cm.data == render_data(log, "greeting", goal), "the data is exactly what was measured"
    assert data_size(cm.data) <= 524288
    assert [e["iteration"] for e in log["entries"] if e["runUid"] == uid] == [1, 2, 3]

    # LATER_RUNS more runs: the registry of appended runs (RUNS_TRACKED) forgets "first"
    log = _later_runs(log, "greeting", goal, spec)
    assert appended_through(log, uid) == 0
    assert not [e for e in log["entries"] if e["runUid"] == uid], "compacted, not lost"
    cm.data = render_data(log, "greeting", goal)
    core.replace_namespaced_config_map("greeting-memory", namespace, cm)
    written = core.read_namespaced_config_map("greeting-memory", namespace).data[LOG_KEY]

    # a restarted operator gives every run, finished ones too, one pass
    operator.stop()
    operator.start()
    wait_for(
        "the restarted operator to reconcile the finished run",
        lambda: '"run": "first"' in operator.log_tail(400).split("Signal SIGTERM")[-1],
        timeout=30,
    )
    _, after = memory(api_client, namespace, "greeting")
    again = [e["iteration"] for e in after["entries"] if e["runUid"] == uid]
    assert again == [], f"run first appended again after a restart: iterations {again}"
    assert after["summary"] == log["summary"]
    assert core.read_namespaced_config_map("greeting-memory", namespace).data[LOG_KEY] == written
