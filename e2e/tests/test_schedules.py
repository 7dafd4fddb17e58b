"""Schedules and history with real pods: firing, Forbid, Replace, an operator outage, pruning.

Cron has minute resolution, so the schedule behaviours share one timeline: their Loops start
together (one namespace served by the test's operator, one by an operator of the test's own that
is stopped for two scheduled times), and each assertion reads what happened by then.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.helpers import wait_for
from e2e.loops import (
    GROUP,
    VERSION,
    create_loop,
    events_for,
    memory,
    run_pods,
    start_run,
    wait_finished,
)
from e2e.operator_process import OperatorProcess, RunningOperator

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
SCHEDULED_AT = "kloop.dev/scheduled-at"
BUSYBOX = "kloop.local/busybox:1.0"
PASS = """printf '{"v":1,"verdict":"pass","reasons":["ok"]}' > /dev/termination-log"""


def _container(name: str, script: str) -> Json:
    return {
        "name": name,
        "image": BUSYBOX,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
    }


def quick_loop(name: str, maker_sleep: int = 0, **spec: Any) -> Json:
    """A Loop whose run passes on iteration 1 (after the maker sleeps), with a teardown."""
    maker = (
        f"sleep {maker_sleep}; "
        """printf '{"v":1,"outcome":"changed","summary":"did it %s","tokens":1}' """
        """"$KLOOP_RUN" > /dev/termination-log"""
    )
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Loop",
        "metadata": {"name": name},
        "spec": {
            "goal": "pass at once",
            "maker": {
                "timeoutSeconds": 600,
                "template": {"spec": {"containers": [_container("agent", maker)]}},
            },
            "checkers": [
                {"name": "ok", "template": {"spec": {"containers": [_container("check", PASS)]}}}
            ],
            "budget": {"maxIterations": 1},
            "teardown": {
                "template": {"spec": {"containers": [_container("cleanup", "echo $KLOOP_RUN")]}}
            },
            **spec,
        },
    }


def runs(api: client.ApiClient, namespace: str, loop: str) -> list[Json]:
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "loopruns"
    )
    found = [r for r in listed["items"] if r["spec"]["loopRef"]["name"] == loop]
    return sorted(found, key=lambda r: r["metadata"]["name"])


def scheduled_times(api: client.ApiClient, namespace: str, loop: str) -> list[str]:
    return [
        (r["metadata"].get("annotations") or {}).get(SCHEDULED_AT, "")
        for r in runs(api, namespace, loop)
    ]


def get_loop(api: client.ApiClient, namespace: str, name: str) -> Json:
    loop: Json = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "loops", name
    )
    return loop


def reasons(api: client.ApiClient, namespace: str, name: str) -> list[str]:
    return [e.reason for e in events_for(api, namespace, name)]


def minute(t: datetime) -> str:
    return t.replace(second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def wait_until(t: datetime) -> None:
    time.sleep(max(0.0, (t - datetime.now(UTC)).total_seconds()))


def next_boundary(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0) + timedelta(minutes=1)


def clear_of_a_boundary() -> datetime:
    """Now, or just after the next minute if that is too close (Loops created now see it)."""
    now = datetime.now(UTC)
    if now.second >= 55:
        wait_until(next_boundary(now) + timedelta(seconds=1))
    return datetime.now(UTC)


@pytest.fixture
def second_namespace(api_client: client.ApiClient) -> Iterator[str]:
    """A namespace for the operator this test stops and starts itself."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")


def test_schedules_fire_skip_replace_and_catch_up_once_after_an_outage(
    cluster: Path,
    api_client: client.ApiClient,
    namespace: str,
    second_namespace: str,
    operator: RunningOperator,
    tmp_path: Path,
) -> None:
    outage_op = OperatorProcess(cluster, tmp_path / "outage-operator.log", [second_namespace])
    outage_op.start()
    every = "* * * * *"
    try:
        create_loop(api_client, second_namespace, quick_loop("outage", schedule=every))
        wait_for(
            "the outage Loop's first pass",
            lambda: (get_loop(api_client, second_namespace, "outage").get("status") or {}).get(
                "nextScheduleTime"
            ),
            timeout=30,
        )
        outage_op.stop()
        stopped = datetime.now(UTC)
        before_outage = scheduled_times(api_client, second_namespace, "outage")

        t0 = clear_of_a_boundary()
        create_loop(
            api_client, namespace, quick_loop("every", schedule=every, concurrencyPolicy="Allow")
        )
        create_loop(api_client, namespace, quick_loop("forbid", 100, schedule=every))
        create_loop(
            api_client,
            namespace,
            quick_loop("replace", 600, schedule=every, concurrencyPolicy="Replace"),
        )
        b1 = next_boundary(t0)
        b2 = b1 + timedelta(minutes=1)

        # the outage covers two scheduled times; only the most recent starts, once
        missed_last = next_boundary(stopped) + timedelta(minutes=1)
        wait_until(missed_last + timedelta(seconds=3))
        outage_op.start()
        new = wait_for(
            "the run for the most recent missed time",
            lambda: [
                t
                for t in scheduled_times(api_client, second_namespace, "outage")
                if t not in before_outage
            ],
            timeout=30,
        )
        assert new == [minute(missed_last)], outage_op.log_tail()
        outage_op.kill()  # and a crash right after changes nothing
        outage_op.start()
        time.sleep(3)
        after = [
            t
            for t in scheduled_times(api_client, second_namespace, "outage")
            if t not in before_outage and t <= minute(missed_last)
        ]
        assert after == [minute(missed_last)], "the earlier missed time never starts"
        status = get_loop(api_client, second_namespace, "outage")["status"]
        assert status["lastScheduleTime"] >= minute(missed_last)
    finally:
        outage_op.stop()

    # the first namespace: wait until the second scheduled time has been acted on
    wait_until(b2 + timedelta(seconds=20))
    times = [minute(b1), minute(b2)]

    # Allow: a run per scheduled time, named and annotated by it
    fired = runs(api_client, namespace, "every")
    assert [r["metadata"]["annotations"][SCHEDULED_AT] for r in fired][:2] == times
    for run in fired[:2]:
        when = run["metadata"]["annotations"][SCHEDULED_AT]
        stamp = int(datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()) // 60
        assert run["metadata"]["name"] == f"every-{stamp}"
        assert run["spec"]["context"] == {"scheduledTime": when}
    first = wait_finished(api_client, namespace, fired[0]["metadata"]["name"], timeout=60)
    assert first["status"]["phase"] == "Succeeded", operator.log_tail()
    loop = get_loop(api_client, namespace, "every")["status"]
    assert loop["lastScheduleTime"] >= minute(b2)
    assert loop["nextScheduleTime"] > loop["lastScheduleTime"]
    assert loop["lastSuccessfulRun"] in {r["metadata"]["name"] for r in fired}
    ready = next(c for c in loop["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Scheduled")

    # Forbid: the run of b1 still runs at b2, so b2 is skipped (and never started later)
    assert scheduled_times(api_client, namespace, "forbid") == [minute(b1)]
    assert "RunSkipped" in reasons(api_client, namespace, "forbid")
    forbid_status = get_loop(api_client, namespace, "forbid")["status"]
    assert forbid_status["active"] == [runs(api_client, namespace, "forbid")[0]["metadata"]["name"]]

    # Replace: the run of b1 is aborted at b2, its teardown runs once, the run of b2 goes on
    replaced, successor = runs(api_client, namespace, "replace")[:2]
    assert [
        replaced["metadata"]["annotations"][SCHEDULED_AT],
        successor["metadata"]["annotations"][SCHEDULED_AT],
    ] == times
    name = replaced["metadata"]["name"]
    ended = wait_finished(api_client, namespace, name, timeout=60)["status"]
    assert (ended["phase"], ended["haltReason"]) == ("Halted", "Aborted"), ended.get("message")
    assert f"(replaced by {successor['metadata']['name']})" in ended["message"]
    assert ended["teardown"]["state"] == "Succeeded"
    teardowns = [
        p
        for p in run_pods(api_client, namespace, name)
        if p.metadata.labels["kloop.dev/role"] == "teardown"
    ]
    assert len(teardowns) == 1
    assert "RunReplaced" in reasons(api_client, namespace, "replace")
    assert get_loop(api_client, namespace, "replace")["status"]["active"] == [
        successor["metadata"]["name"]
    ]


def test_history_limits_delete_the_oldest_owned_runs_and_memory_keeps_their_entries(
    api_client: client.ApiClient, namespace: str, operator: RunningOperator
) -> None:
    loop = quick_loop("hist", successfulRunsHistoryLimit=1)
    create_loop(api_client, namespace, loop)
    owner = get_loop(api_client, namespace, "hist")
    custom = client.CustomObjectsApi(api_client)
    ref = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Loop",
        "name": "hist",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    start_run(api_client, namespace, "hist", "applied")  # not owned: never pruned
    wait_finished(api_client, namespace, "applied", timeout=120)
    names = ["hist-a", "hist-b", "hist-c"]
    uids = {}
    for name in names:  # one after the other, as kubectl kloop run would start them
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "LoopRun",
            "metadata": {"name": name, "ownerReferences": [ref]},
            "spec": {"loopRef": {"name": "hist"}},
        }
        uids[name] = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "loopruns", body
        )["metadata"]["uid"]
        done = wait_finished(api_client, namespace, name, timeout=120)
        assert done["status"]["phase"] == "Succeeded", operator.log_tail()

    def left() -> list[str] | None:
        found = [r["metadata"]["name"] for r in runs(api_client, namespace, "hist")]
        return found if found == ["applied", "hist-c"] else None

    wait_for("hist-a and hist-b deleted", left, timeout=60)
    deleted = [
        e.message for e in events_for(api_client, namespace, "hist") if e.reason == "RunDeleted"
    ]
    assert sorted(m.split()[0] for m in deleted) == ["hist-a", "hist-b"]
    core = client.CoreV1Api(api_client)
    wait_for(
        "the deleted runs' pods garbage-collected",
        lambda: (
            not [
                p
                for p in core.list_namespaced_pod(namespace).items
                if p.metadata.labels.get("kloop.dev/run") in ("hist-a", "hist-b")
            ]
        ),
        timeout=90,
    )
    _, log = memory(api_client, namespace, "hist")
    remembered = {e["runUid"] for e in log["entries"]}
    assert set(uids.values()) <= remembered, "memory keeps the deleted runs' entries"
    status = get_loop(api_client, namespace, "hist")["status"]
    assert (status["lastRun"], status["phase"]) == ("hist-c", "Succeeded")
    assert status["lastSuccessfulRun"] == "hist-c"
    assert "active" not in status
