"""Defect 9 of issue 14: agent pods start with least privilege and do not leak their logs."""

from __future__ import annotations

from typing import Any

import pytest

from kloop.adapters.observe import approver
from kloop.adapters.pods import render_pod
from kloop.api.looprun import LoopRunSpec
from kloop.core.assess import pod_error
from kloop.core.model import ObservedPod, PodRequest, Role
from tests.unit.builders import T0, loop_spec

pytestmark = pytest.mark.unit

RUN = {"metadata": {"name": "r1", "namespace": "team", "uid": "u-1"}}
OWNER = {"apiVersion": "kloop.dev/v1alpha1", "kind": "LoopRun", "name": "r1", "uid": "u-1"}
MAKER = PodRequest("r1-s0-local-i1-maker", Role.MAKER, 1, "default", "local")
RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def render(pod_spec: dict[str, Any]) -> dict[str, Any]:
    run_spec = LoopRunSpec.model_validate({"loopRef": {"name": "l"}})
    loop = loop_spec(maker={"template": {"spec": pod_spec}})
    return render_pod(MAKER, RUN, "l", loop, run_spec, "l-memory", OWNER)["spec"]


def agent(**fields: Any) -> dict[str, Any]:
    return {"name": "agent", "image": "maker:1", **fields}


def test_trust_9_pods_get_safe_defaults_when_the_template_sets_nothing() -> None:
    spec = render({"containers": [agent(), agent(name="sidecar")], "initContainers": [agent()]})
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    for container in [*spec["containers"], *spec["initContainers"]]:
        assert container["securityContext"] == RESTRICTED, container["name"]


def test_trust_9_a_field_the_template_sets_wins_over_each_default() -> None:
    spec = render(
        {
            "automountServiceAccountToken": True,
            "enableServiceLinks": True,
            "securityContext": {"runAsUser": 1000, "seccompProfile": {"type": "Unconfined"}},
            "containers": [
                agent(
                    securityContext={
                        "allowPrivilegeEscalation": True,
                        "capabilities": {"add": ["NET_BIND_SERVICE"]},
                    }
                ),
                agent(name="plain", securityContext={"readOnlyRootFilesystem": True}),
            ],
        }
    )
    assert spec["automountServiceAccountToken"] is True
    assert spec["enableServiceLinks"] is True
    assert spec["securityContext"] == {"runAsUser": 1000, "seccompProfile": {"type": "Unconfined"}}
    first, plain = spec["containers"]
    assert first["securityContext"] == {
        "allowPrivilegeEscalation": True,
        "capabilities": {"add": ["NET_BIND_SERVICE"]},
    }
    assert plain["securityContext"] == {"readOnlyRootFilesystem": True, **RESTRICTED}


@pytest.mark.parametrize(
    "context",
    [{"privileged": True}, {"capabilities": {"add": ["SYS_ADMIN"]}}],
)
def test_trust_9_privileged_templates_stay_valid_for_the_apiserver(
    context: dict[str, Any],
) -> None:
    # the apiserver refuses allowPrivilegeEscalation: false next to privileged or CAP_SYS_ADMIN
    spec = render({"containers": [agent(securityContext=dict(context))]})
    assert "allowPrivilegeEscalation" not in spec["containers"][0]["securityContext"]


def test_trust_9_windows_pods_get_only_the_portable_defaults() -> None:
    spec = render({"os": {"name": "windows"}, "containers": [agent()]})
    assert spec["automountServiceAccountToken"] is False
    assert "securityContext" not in spec
    assert "securityContext" not in spec["containers"][0]


def test_trust_9_termination_message_is_the_file_only_unless_the_template_opts_in() -> None:
    spec = render({"containers": [agent(), agent(name="sidecar")]})
    assert spec["containers"][0]["terminationMessagePolicy"] == "File"
    opted_in = render({"containers": [agent(terminationMessagePolicy="FallbackToLogsOnError")]})
    assert opted_in["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (ObservedPod("p", "Failed", T0, 3, "Error", None), "maker exited with code 3"),
        (ObservedPod("p", "Failed", T0, 3, "Error", "  "), "maker exited with code 3"),
        (ObservedPod("p", "Failed", T0, None, "Error", None), "maker failed (Error)"),
        (ObservedPod("p", "Failed", T0, None, None, None), "maker failed (no reason given)"),
    ],
)
def test_trust_9_a_crash_with_no_message_still_has_a_clear_reason(
    pod: ObservedPod, expected: str
) -> None:
    error = pod_error(pod, 60, T0, "maker")
    assert error is not None
    assert error.message == expected


def _run(annotations: dict[str, str]) -> dict[str, Any]:
    managed: dict[str, Any] = {"f:metadata": {"f:annotations": {"f:kloop.dev/approve": {}}}}
    return {
        "metadata": {
            "annotations": annotations,
            "managedFields": [{"manager": "kubectl-annotate", "fieldsV1": managed}],
        }
    }


def test_trust_9_the_approver_is_approved_by_not_the_client_chosen_field_manager() -> None:
    run = _run({"kloop.dev/approve": "prod", "kloop.dev/approved-by": "alice@example.com"})
    assert approver(run) == "alice@example.com"
    # no approved-by: the admission policy is not installed, so say the name is unverified
    assert approver(_run({"kloop.dev/approve": "prod"})) == "kubectl-annotate (unverified)"
