"""Notifications on a real cluster, received by webhook servers on loopback.

A receiver gets each event once, in order; one that is down or never answers does not slow the run.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from e2e.crds import install_crds
from e2e.helpers import wait_for
from e2e.loops import GROUP, VERSION, create_loop, get_run, greeting_loop, start_run, wait_finished
from e2e.operator_process import OperatorProcess
from e2e.webhook import closed_port_url, receiver

pytestmark = pytest.mark.e2e

FLEET_EVENTS = ["stage-started", "awaiting-approval", "paused", "halted", "succeeded", "failed"]
# a path credential, as Slack and Teams webhooks carry: it must never show outside the request
TOKEN = "s3cr3t-hook-token-4f1c"

Json = dict[str, Any]


@pytest.fixture(autouse=True)
def _own_crds(api_client: client.ApiClient) -> None:
    """Install the checkout's CRDs again: the shared cluster's may have been replaced meanwhile.

    The new events and status.notifications must not be refused or pruned.
    """
    install_crds(api_client)


def _secret(api: client.ApiClient, namespace: str, name: str, url: str) -> None:
    client.CoreV1Api(api).create_namespaced_secret(
        namespace, {"metadata": {"name": name}, "stringData": {"url": url}}
    )


def _target(name: str, secret: str, events: list[str] = FLEET_EVENTS) -> Json:
    return {"name": name, "urlSecretRef": {"name": secret, "key": "url"}, "events": events}


def _me(api: client.ApiClient) -> str:
    """The authenticated user of the test's kubeconfig (approved-by must name it)."""
    review = client.AuthenticationV1Api(api).create_self_subject_review(
        client.V1SelfSubjectReview()
    )
    return str(review.status.user_info.username)


def test_webhook_gets_each_event_of_a_staged_run_once_in_order(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    with receiver(f"/hooks/{TOKEN}") as hook:
        _secret(api_client, namespace, "hook", hook.url)
        loop = greeting_loop()
        loop["spec"]["stages"] = [
            {"name": "a", "clusters": ["local"]},
            {"name": "b", "clusters": ["local"], "requireApproval": True},
        ]
        loop["spec"]["notify"] = [_target("ops", "hook")]
        create_loop(api_client, namespace, loop)
        start_run(api_client, namespace, "greeting", "staged")

        wait_for(
            "the approval to be asked for",
            lambda: (
                (get_run(api_client, namespace, "staged").get("status") or {}).get("phase")
                == "AwaitingApproval"
            ),
            timeout=180,
        )
        wait_for("awaiting-approval to arrive", lambda: len(hook.deliveries) >= 2, timeout=30)
        assert hook.events() == [("stage-started", "a"), ("awaiting-approval", "b")]
        client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "loopruns",
            "staged",
            {
                "metadata": {
                    "annotations": {
                        "kloop.dev/approve": "b",
                        "kloop.dev/approved-by": _me(api_client),
                    }
                }
            },
        )
        run = wait_finished(api_client, namespace, "staged", timeout=180)
        assert run["status"]["phase"] == "Succeeded", run["status"].get("message")
        wait_for("succeeded to arrive", lambda: len(hook.deliveries) >= 4, timeout=30)
        time.sleep(2)  # anything sent twice would arrive now
        assert hook.events() == [
            ("stage-started", "a"),
            ("awaiting-approval", "b"),
            ("stage-started", "b"),
            ("succeeded", "b"),
        ]
        uid = run["metadata"]["uid"]
        for delivery in hook.deliveries:
            body = delivery.body
            assert delivery.path == f"/hooks/{TOKEN}"
            assert delivery.headers["x-kloop-event"] == body["event"]
            assert delivery.headers["idempotency-key"] == body["idempotencyKey"]
            assert body["idempotencyKey"].startswith(f"{uid}/{body['event']}/")
            assert (body["namespace"], body["run"], body["loop"]) == (
                namespace,
                "staged",
                "greeting",
            )
            assert [c["name"] for c in body["clusters"]] == ["local"]
        final = hook.deliveries[-1].body
        assert final["phase"] == "Succeeded"
        assert final["clusters"][0]["state"] == "Passed"
        assert final["clusters"][0]["lastVerdict"] == "pass"
        assert [s["state"] for s in final["stages"]] == ["Passed", "Passed"]

        def recorded() -> Json | None:
            entries = get_run(api_client, namespace, "staged")["status"].get("notifications")
            last = (entries or [{}])[-1]
            return last if last.get("event") == "succeeded" else None

        entry = wait_for("the last delivery in status", recorded, timeout=30)
        assert (entry["name"], entry["result"], entry["attempts"]) == ("ops", "delivered", 1)
        assert entry["key"] == final["idempotencyKey"]
    status_text = str(get_run(api_client, namespace, "staged"))
    assert TOKEN not in status_text
    assert TOKEN not in operator.log_path.read_text(errors="replace")


def test_receivers_down_or_hanging_do_not_slow_the_run(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    with receiver(f"/hooks/{TOKEN}", hang=True) as hanging:
        _secret(api_client, namespace, "hang", hanging.url)
        _secret(api_client, namespace, "down", closed_port_url(f"/hooks/{TOKEN}"))
        loop = greeting_loop()
        loop["spec"]["notify"] = [_target("hang", "hang"), _target("down", "down")]
        create_loop(api_client, namespace, loop)
        start_run(api_client, namespace, "greeting", "unheard")
        run = wait_finished(api_client, namespace, "unheard", timeout=180)
        assert run["status"]["phase"] == "Succeeded", run["status"].get("message")
        # the first hanging request was made before the run ended, and is still unanswered:
        # one hanging delivery alone takes 5 attempts of 5s (plus backoff), so a run that
        # waited for it would last over 40s and show a "hang" result already
        assert hanging.deliveries, "the hanging receiver was called"
        assert hanging.deliveries[0].body["event"] == "stage-started"
        names = [e["name"] for e in run["status"].get("notifications") or []]
        assert "hang" not in names
        assert run["status"]["usage"]["wallSeconds"] < 40, run["status"]["usage"]

        def down_recorded() -> Json | None:
            entries = get_run(api_client, namespace, "unheard")["status"].get("notifications")
            return next((e for e in entries or [] if e["name"] == "down"), None)

        # refused connections: 5 attempts, backing off 1+2+4+8s, then given up
        entry = wait_for("the closed port's result in status", down_recorded, timeout=60)
        assert (entry["result"], entry["attempts"]) == ("failed", 5), entry
        assert entry["event"] == "stage-started"
        assert TOKEN not in str(entry)
    assert TOKEN not in operator.log_path.read_text(errors="replace")
