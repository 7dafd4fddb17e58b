"""The iteration engine with real pods: pass after failures, caps, garbage output, a crash."""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from e2e.helpers import wait_for
from e2e.loops import (
    create_loop,
    events_for,
    get_run,
    greeting_loop,
    memory,
    run_pods,
    start_run,
    wait_finished,
)
from e2e.operator_process import RunningOperator

pytestmark = [pytest.mark.e2e, pytest.mark.both_modes]

ALWAYS_FAIL = (
    """printf '{"v":1,"verdict":"fail","reasons":["still wrong"]}' > /dev/termination-log"""
)


def _roles(pods: list[client.V1Pod], role: str) -> list[str]:
    return sorted(p.metadata.name for p in pods if p.metadata.labels["kloop.dev/role"] == role)


def test_loop_passes_on_iteration_three_after_two_failing_verdicts(
    api_client: client.ApiClient, namespace: str, operator: RunningOperator
) -> None:
    create_loop(api_client, namespace, greeting_loop())
    start_run(api_client, namespace, "greeting", "greeting-1")
    run = wait_finished(api_client, namespace, "greeting-1")
    status = run["status"]
    assert status["phase"] == "Succeeded", operator.log_tail()
    records = status["iterations"]
    assert [r["decision"] for r in records] == ["iterate", "iterate", "succeed"]
    assert records[0]["checkers"][0]["reasons"] == ["missing letter l in helo"]
    assert records[1]["checkers"][0]["reasons"] == ["missing letter o in wrld"]
    assert "missing letter l in helo" in records[1]["maker"]["summary"], "feedback reached maker"
    assert status["usage"]["tokens"] == 300
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert status["teardown"]["state"] == "Succeeded"

    markdown, log = memory(api_client, namespace, "greeting")
    assert [e["iteration"] for e in log["entries"]] == [1, 2, 3]
    assert [e["decision"] for e in log["entries"]] == ["iterate", "iterate", "succeed"]
    assert "missing letter o in wrld" in markdown
    assert "greeting-1 iteration 3: wrote hello, world" in markdown

    pods = run_pods(api_client, namespace, "greeting-1")
    assert _roles(pods, "maker") == [f"greeting-1-s0-local-i{i}-maker" for i in (1, 2, 3)]
    assert len(_roles(pods, "teardown")) == 1
    reasons = {e.reason for e in events_for(api_client, namespace, "greeting-1")}
    assert {"ChecksFailed", "ChecksPassed", "Succeeded"} <= reasons


def test_max_iterations_halts_and_teardown_runs_once(
    api_client: client.ApiClient, namespace: str, operator: RunningOperator
) -> None:
    loop = greeting_loop()
    loop["spec"]["budget"] = {"maxIterations": 2}
    loop["spec"]["checkers"][0]["template"]["spec"]["containers"][0]["args"] = [ALWAYS_FAIL]
    create_loop(api_client, namespace, loop)
    start_run(api_client, namespace, "greeting", "capped")
    status = wait_finished(api_client, namespace, "capped")["status"]
    assert (status["phase"], status["haltReason"]) == ("Halted", "MaxIterations"), status
    assert status["iteration"] == 2
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["BudgetExhausted"] == ("True", "MaxIterations")
    assert conditions["Stalled"] == ("True", "MaxIterations")
    assert status["teardown"]["state"] == "Succeeded"
    assert len(_roles(run_pods(api_client, namespace, "capped"), "teardown")) == 1
    # a restarted operator reconciles every run again, finished ones too: no second teardown
    operator.stop()
    operator.start()
    wait_for(
        "the restarted operator to reconcile the finished run",
        lambda: '"run": "capped"' in operator.log_tail(400).split("Signal SIGTERM")[-1],
        timeout=30,
    )
    assert len(_roles(run_pods(api_client, namespace, "capped"), "teardown")) == 1
    assert operator.log_tail(400).count('"pod": "capped-teardown", "role": "teardown"') == 1


def test_token_budget_halts_the_run(
    api_client: client.ApiClient, namespace: str, operator: RunningOperator
) -> None:
    loop = greeting_loop()
    loop["spec"]["budget"] = {"maxIterations": 5, "maxTokens": 150}
    create_loop(api_client, namespace, loop)
    start_run(api_client, namespace, "greeting", "spendy")
    status = wait_finished(api_client, namespace, "spendy")["status"]
    assert (status["phase"], status["haltReason"]) == ("Halted", "TokenBudget"), status
    assert status["usage"]["tokens"] == 200
    assert "maxTokens=150" in status["message"]
    pods = run_pods(api_client, namespace, "spendy")
    assert "spendy-s0-local-i2-check-greeting" not in _roles(pods, "checker")
    assert len(_roles(pods, "teardown")) == 1
    assert status["teardown"]["state"] == "Succeeded"


def test_garbage_maker_output_is_an_invalid_agent_output_error(
    api_client: client.ApiClient, namespace: str, operator: RunningOperator
) -> None:
    loop = greeting_loop()
    loop["spec"]["maker"]["template"]["spec"]["containers"][0]["args"] = [
        "echo 'I think it worked!' > /dev/termination-log"
    ]
    create_loop(api_client, namespace, loop)
    start_run(api_client, namespace, "greeting", "garbage")
    status = wait_finished(api_client, namespace, "garbage")["status"]
    assert (status["phase"], status["haltReason"]) == ("Failed", "InvalidAgentOutput")
    assert "maker result is not valid JSON of schema v1" in status["message"]
    assert status["iterations"][0]["maker"]["outcome"] == "error"
    warnings = [
        e
        for e in events_for(api_client, namespace, "garbage")
        if e.type == "Warning" and e.reason == "InvalidAgentOutput"
    ]
    assert warnings
    assert not _roles(run_pods(api_client, namespace, "garbage"), "checker")


def test_operator_killed_mid_iteration_resumes_without_duplicate_pods(
    api_client: client.ApiClient, namespace: str, operator: RunningOperator
) -> None:
    loop = greeting_loop()
    agent = loop["spec"]["maker"]["template"]["spec"]["containers"][0]
    agent["args"] = ["sleep 6\n" + agent["args"][0]]
    create_loop(api_client, namespace, loop)
    start_run(api_client, namespace, "greeting", "crashy")
    core = client.CoreV1Api(api_client)
    maker2 = "crashy-s0-local-i2-maker"

    def maker2_running() -> client.V1Pod | None:
        try:
            pod = core.read_namespaced_pod(maker2, namespace)
        except client.ApiException:
            return None
        return pod if pod.status.phase == "Running" else None

    before = wait_for("iteration 2 maker running", maker2_running, timeout=120)
    operator.kill()
    time.sleep(2)
    operator.start()
    status = wait_finished(api_client, namespace, "crashy")["status"]
    assert status["phase"] == "Succeeded", operator.log_tail()
    assert [r["decision"] for r in status["iterations"]] == ["iterate", "iterate", "succeed"]
    after = core.read_namespaced_pod(maker2, namespace)
    assert after.metadata.uid == before.metadata.uid, "the restarted operator adopted the pod"
    pods = run_pods(api_client, namespace, "crashy")
    names = [p.metadata.name for p in pods]
    assert len(names) == len(set(names)) == 7, names  # 3 makers, 3 checkers, 1 teardown
    _, log = memory(api_client, namespace, "greeting")
    assert [e["iteration"] for e in log["entries"]] == [1, 2, 3], "no entry lost or doubled"
    assert get_run(api_client, namespace, "crashy")["metadata"].get("annotations") is None


def test_deleting_a_looprun_stops_it_and_garbage_collects_its_pods(
    api_client: client.ApiClient, namespace: str, operator: RunningOperator
) -> None:
    loop = greeting_loop()
    agent = loop["spec"]["maker"]["template"]["spec"]["containers"][0]
    agent["args"] = ["sleep 300"]
    create_loop(api_client, namespace, loop)
    start_run(api_client, namespace, "greeting", "doomed")
    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    wait_for("maker pod", lambda: run_pods(api_client, namespace, "doomed"), timeout=60)
    assert not get_run(api_client, namespace, "doomed")["metadata"].get("finalizers")
    custom.delete_namespaced_custom_object("kloop.dev", "v1alpha1", namespace, "loopruns", "doomed")

    def run_gone() -> bool:
        try:
            get_run(api_client, namespace, "doomed")
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_for("LoopRun deleted", run_gone, timeout=60)
    wait_for(
        "pods garbage-collected",
        lambda: (
            not [
                p
                for p in core.list_namespaced_pod(namespace).items
                if p.metadata.labels.get("kloop.dev/run") == "doomed"
                and p.metadata.deletion_timestamp is None
            ]
        ),
        timeout=90,
    )


def test_memory_never_overwrites_a_configmap_that_is_not_the_loops(
    api_client: client.ApiClient, namespace: str, operator: RunningOperator
) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="precious"), data={"k": "v"}),
    )
    loop = greeting_loop()
    loop["spec"]["memory"] = {"configMapName": "precious"}
    create_loop(api_client, namespace, loop)
    start_run(api_client, namespace, "greeting", "careful")
    status = wait_finished(api_client, namespace, "careful")["status"]
    assert (status["phase"], status["haltReason"]) == ("Failed", "MemoryConflict")
    assert "will not overwrite" in status["message"]
    precious = core.read_namespaced_config_map("precious", namespace)
    assert precious.data == {"k": "v"}
    assert not precious.metadata.owner_references
    assert not _roles(run_pods(api_client, namespace, "careful"), "maker")


def test_a_pod_the_apiserver_rejects_fails_the_run_with_its_reason(
    api_client: client.ApiClient, namespace: str, operator: RunningOperator
) -> None:
    loop = greeting_loop()
    agent = loop["spec"]["maker"]["template"]["spec"]["containers"][0]
    agent["resources"] = {"limits": {"cpu": "banana"}}
    create_loop(api_client, namespace, loop)
    start_run(api_client, namespace, "greeting", "rejected")
    status = wait_finished(api_client, namespace, "rejected", timeout=60)["status"]
    assert (status["phase"], status["haltReason"]) == ("Failed", "PodRejected"), status
    assert "rejected by the apiserver" in status["message"]
    assert "quantities must match" in status["message"]
    reasons = {e.reason for e in events_for(api_client, namespace, "rejected")}
    assert "PodRejected" in reasons


def test_a_checker_that_errors_once_is_retried_and_the_run_passes(
    api_client: client.ApiClient, namespace: str, operator: RunningOperator
) -> None:
    loop = greeting_loop()
    checker = loop["spec"]["checkers"][0]
    checker["retries"] = 1
    script = checker["template"]["spec"]["containers"][0]["args"][0]
    # the first attempt crashes (its pod name has no -a2 suffix); the second grades as usual
    checker["template"]["spec"]["containers"][0]["args"] = [
        'case "$HOSTNAME" in *-a2) ;; *) echo "flaky runner"; exit 3 ;; esac\n' + script
    ]
    create_loop(api_client, namespace, loop)
    start_run(api_client, namespace, "greeting", "retry")
    status = wait_finished(api_client, namespace, "retry")["status"]
    first = status["iterations"][0]
    assert [r["verdict"] for r in first["retried"]] == ["error"], first
    assert "exited with code 3" in first["retried"][0]["reasons"][0]
    assert first["checkers"][0]["verdict"] == "fail", "the retry graded the maker's work"
    assert status["phase"] == "Succeeded", status.get("message")
    reasons = {e.reason for e in events_for(api_client, namespace, "retry")}
    assert "CheckerRetry" in reasons
