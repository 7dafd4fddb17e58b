"""The agent contract as rendered into pod manifests, and pods read back (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from kloop.adapters.pods import observe_pod, render_pod
from kloop.api.looprun import LoopRunSpec
from kloop.core.model import PodRequest, Role
from tests.unit.builders import loop_spec

pytestmark = pytest.mark.unit

RUN = {
    "apiVersion": "kloop.dev/v1alpha1",
    "kind": "LoopRun",
    "metadata": {"name": "r1", "namespace": "team", "uid": "u-1"},
}
OWNER = {"apiVersion": "kloop.dev/v1alpha1", "kind": "LoopRun", "name": "r1", "uid": "u-1"}


def render(req: PodRequest, **spec: Any) -> dict[str, Any]:
    run_spec = LoopRunSpec.model_validate(
        {"loopRef": {"name": "l"}, "goalSuffix": "for v2", "context": {"tag": "v2"}}
    )
    return render_pod(req, RUN, "l", loop_spec(**spec), run_spec, "l-memory", OWNER)


def test_maker_pod_carries_the_contract() -> None:
    req = PodRequest(
        "r1-s0-local-i2-maker", Role.MAKER, 2, "default", "local", files={"feedback.json": "{}"}
    )
    pod = render(req, skills=[{"configMapName": "conventions"}])
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KLOOP_ROLE"] == "maker"
    assert env["KLOOP_ITERATION"] == "2"
    assert env["KLOOP_BRANCH"] == "kloop/r1/default-local-i2"
    assert env["KLOOP_GOAL"] == "make it pass\nfor v2"
    assert env["KLOOP_CONTEXT"] == '{"tag": "v2"}'
    assert env["KLOOP_CLUSTER"] == "local"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/kloop/memory"]["readOnly"] is True
    assert mounts["/kloop/feedback.json"]["subPath"] == "feedback.json"
    assert "/kloop/skills/conventions" in mounts
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["activeDeadlineSeconds"] == 900
    assert pod["metadata"]["ownerReferences"] == [OWNER]
    assert pod["metadata"]["labels"]["kloop.dev/role"] == "maker"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["kloop-memory"]["configMap"] == {"name": "l-memory", "optional": True}
    assert volumes["kloop-inputs"]["configMap"]["name"] == "r1-s0-local-i2-maker-in"


def test_checker_pod_uses_the_checker_template_and_sees_the_maker_result() -> None:
    req = PodRequest(
        "r1-s0-local-i1-check-tests",
        Role.CHECKER,
        1,
        "default",
        "local",
        checker="tests",
        files={"maker.json": "{}", "feedback.json": "{}"},
    )
    pod = render(req)
    container = pod["spec"]["containers"][0]
    assert container["image"] == "check:1"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (env["KLOOP_ROLE"], env["KLOOP_CHECKER"]) == ("checker", "tests")
    assert "/kloop/maker.json" in {m["mountPath"] for m in container["volumeMounts"]}


def test_user_env_and_volumes_are_kept() -> None:
    template = {
        "spec": {
            "containers": [
                {
                    "name": "a",
                    "image": "maker:1",
                    "env": [{"name": "MINE", "value": "1"}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "serviceAccountName": "agent",
        }
    }
    pod = render(PodRequest("p", Role.MAKER, 1, "default", "local"), maker={"template": template})
    container = pod["spec"]["containers"][0]
    assert {"name": "MINE", "value": "1"} in container["env"]
    assert container["volumeMounts"][0]["mountPath"] == "/data"
    assert pod["spec"]["serviceAccountName"] == "agent"
    assert pod["spec"]["volumes"][0]["name"] == "data"


def _pod(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-11-25T12:00:00Z"},
        "spec": {"containers": [{"name": "agent"}, {"name": "sidecar"}]},
        "status": status,
    }


def test_observed_pod_reads_the_first_containers_termination() -> None:
    pod = observe_pod(
        _pod(
            {
                "phase": "Failed",
                "containerStatuses": [
                    {"name": "sidecar", "state": {"terminated": {"exitCode": 0}}},
                    {
                        "name": "agent",
                        "state": {
                            "terminated": {
                                "exitCode": 137,
                                "reason": "OOMKilled",
                                "message": "killed",
                            }
                        },
                    },
                ],
            }
        )
    )
    assert (pod.phase, pod.exit_code, pod.reason, pod.message) == (
        "Failed",
        137,
        "OOMKilled",
        "killed",
    )


def test_observed_pod_reports_why_it_waits() -> None:
    pod = observe_pod(
        _pod(
            {
                "phase": "Pending",
                "containerStatuses": [
                    {"name": "agent", "state": {"waiting": {"reason": "ErrImageNeverPull"}}}
                ],
            }
        )
    )
    assert pod.reason == "ErrImageNeverPull"


def test_a_pod_placed_in_its_target_has_no_owner_no_memory_and_runs_as_the_agent() -> None:
    from kloop.adapters.pods import LABEL_RUN_UID, place_in_target

    manifest: dict[str, Any] = {
        "metadata": {"name": "p", "namespace": "team-a", "labels": {}, "ownerReferences": [{}]},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "volumeMounts": [
                        {"name": "kloop-memory", "mountPath": "/kloop/memory"},
                        {"name": "kloop-target", "mountPath": "/kloop/target"},
                    ],
                }
            ],
            "volumes": [{"name": "kloop-memory"}, {"name": "kloop-target"}],
        },
    }
    placed = place_in_target(manifest, "kloop-agents", "agent", "uid-1")
    assert placed["metadata"]["namespace"] == "kloop-agents"
    assert "ownerReferences" not in placed["metadata"]
    assert placed["metadata"]["labels"][LABEL_RUN_UID] == "uid-1"
    assert placed["spec"]["serviceAccountName"] == "agent"
    assert [v["name"] for v in placed["spec"]["volumes"]] == ["kloop-target"]
    assert manifest["metadata"]["namespace"] == "team-a", "the hub manifest is left as it was"
