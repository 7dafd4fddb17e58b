"""Issue 14 on a real cluster: refused writes, transient errors, lost pods, re-created runs.

Faults are injected with the apiserver's own machinery, scoped to the test's namespace and
removed afterwards: a ValidatingAdmissionPolicy that refuses a status write, and a validating
webhook whose endpoint (a closed port on loopback) never answers, which the apiserver turns into
a 500 for the memory ConfigMap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.helpers import wait_for
from e2e.loops import (
    GROUP,
    VERSION,
    create_loop,
    events_for,
    get_run,
    greeting_loop,
    run_pods,
    start_run,
    wait_finished,
)
from e2e.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

Json = dict[str, Any]


def _in_namespace(namespace: str) -> Json:
    return {"matchLabels": {"kubernetes.io/metadata.name": namespace}}


@contextlib.contextmanager
def _refuse_second_iteration(api: client.ApiClient, namespace: str) -> Iterator[None]:
    """A policy refusing any LoopRun status that reaches iteration 2, in this namespace only."""
    admission = client.AdmissionregistrationV1Api(api)
    name = f"test-refuse-status-{namespace}"
    admission.create_validating_admission_policy(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [GROUP],
                            "apiVersions": [VERSION],
                            "operations": ["UPDATE"],
                            "resources": ["loopruns/status"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "!has(object.status) || !has(object.status.iteration)"
                        " || object.status.iteration < 2",
                        "message": "test policy: no second iteration",
                    }
                ],
            },
        }
    )
    admission.create_validating_admission_policy_binding(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": _in_namespace(namespace)},
            },
        }
    )
    try:
        yield
    finally:
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)


@contextlib.contextmanager
def _memory_writes_fail(api: client.ApiClient, namespace: str) -> Iterator[str]:
    """Every write of a memory ConfigMap here fails with a 500 until the context ends."""
    admission = client.AdmissionregistrationV1Api(api)
    name = f"test-unreachable-{namespace}"
    admission.create_validating_webhook_configuration(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "unreachable.test.kloop.dev",
                    # a closed port on loopback: the apiserver's call fails at once
                    "clientConfig": {"url": "https://127.0.0.1:9/unreachable"},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["configmaps"],
                        }
                    ],
                    "namespaceSelector": _in_namespace(namespace),
                    "objectSelector": {
                        "matchExpressions": [{"key": "kloop.dev/loop", "operator": "Exists"}]
                    },
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 2,
                }
            ],
        }
    )
    try:
        yield name
    finally:
        with contextlib.suppress(ApiException):
            admission.delete_validating_webhook_configuration(name)


def _condition(run: Json, type_: str) -> Json | None:
    return next(
        (c for c in (run.get("status") or {}).get("conditions") or [] if c["type"] == type_), None
    )


def test_trust_2_a_status_the_apiserver_refuses_fails_the_run_with_its_reason(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_loop(api_client, namespace, greeting_loop())
    with _refuse_second_iteration(api_client, namespace):
        start_run(api_client, namespace, "greeting", "refused")
        status = wait_finished(api_client, namespace, "refused", timeout=90)["status"]
    assert (status["phase"], status["haltReason"]) == ("Failed", "StatusRejected"), status
    assert "test policy: no second iteration" in status["message"]
    assert status["teardown"]["state"] == "Succeeded", "teardown still runs"
    reasons = {e.reason for e in events_for(api_client, namespace, "refused")}
    assert "StatusRejected" in reasons


def test_trust_2_transient_errors_show_on_the_run_and_it_recovers(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_loop(api_client, namespace, greeting_loop())
    with _memory_writes_fail(api_client, namespace):
        start_run(api_client, namespace, "greeting", "flaky")

        def retrying() -> Json | None:
            found = _condition(get_run(api_client, namespace, "flaky"), "Reconciling")
            return found if found and found["reason"] == "RetryingAfterError" else None

        condition = wait_for("Reconciling=RetryingAfterError", retrying, timeout=90)
        assert "webhook" in condition["message"], condition
        events = events_for(api_client, namespace, "flaky")
        warnings = [e for e in events if e.reason == "RetryingAfterError"]
        assert warnings and warnings[0].type == "Warning"
        assert len({e.message for e in warnings}) == len(warnings), "one Event per distinct error"
    status = wait_finished(api_client, namespace, "flaky", timeout=150)["status"]
    assert status["phase"] == "Succeeded", status
    assert _condition({"status": status}, "Reconciling") is None


def test_trust_8_a_deleted_maker_pod_is_lost_not_silently_run_again(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    loop = greeting_loop()
    container = loop["spec"]["maker"]["template"]["spec"]["containers"][0]
    container["args"] = ["sleep 120"]
    create_loop(api_client, namespace, loop)
    start_run(api_client, namespace, "greeting", "lost")
    maker = "lost-s0-local-i1-maker"

    def uid_recorded() -> bool:
        records = (get_run(api_client, namespace, "lost").get("status") or {}).get("iterations")
        pods = (records or [{}])[0].get("pods") or []
        return any(p["name"] == maker and p.get("uid") for p in pods)

    wait_for("the maker's uid in status", uid_recorded, timeout=60)
    client.CoreV1Api(api_client).delete_namespaced_pod(maker, namespace, grace_period_seconds=0)
    status = wait_finished(api_client, namespace, "lost", timeout=60)["status"]
    assert (status["phase"], status["haltReason"]) == ("Failed", "PodLost"), status
    assert "disappeared" in status["iterations"][0]["maker"]["summary"]
    makers = [
        p
        for p in run_pods(api_client, namespace, "lost")
        if p.metadata.labels["kloop.dev/role"] == "maker"
    ]
    assert all(p.metadata.deletion_timestamp for p in makers), "no second maker was created"
    assert "PodLost" in {e.reason for e in events_for(api_client, namespace, "lost")}


def test_trust_8_a_run_replaced_under_the_same_name_gets_its_own_task(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_loop(api_client, namespace, greeting_loop())
    start_run(api_client, namespace, "greeting", "again")
    wait_for(
        "the first run to start",
        lambda: (get_run(api_client, namespace, "again").get("status") or {}).get("iteration"),
        timeout=60,
    )
    first_uid = get_run(api_client, namespace, "again")["metadata"]["uid"]
    client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "loopruns", "again"
    )
    start_run(api_client, namespace, "greeting", "again")  # as kubectl replace --force does
    run = wait_finished(api_client, namespace, "again", timeout=150)
    assert run["metadata"]["uid"] != first_uid
    assert run["status"]["phase"] == "Succeeded", run["status"]
