"""Issue 14, defect 9 on a real cluster: admission refuses forged agent pods and approvals.

The policies are installed from ``charts/kloop/files/admission/`` (what the chart ships) and
bound only to each test's namespace, with the operator identity parameter naming the user the
test's operator runs as (the admin kubeconfig); bindings and parameters are removed afterwards,
so the README's development mode keeps working in every other namespace. Other users are
simulated with impersonation (``Impersonate-User``; the admin may impersonate).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from e2e import admission
from e2e.cluster.images import BUSYBOX_IMAGE
from e2e.helpers import wait_for
from e2e.loops import GROUP, VERSION, create_loop, get_run, greeting_loop, start_run, wait_finished
from e2e.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
POD_WRITER = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "patch"]}]


def whoami(api: client.ApiClient) -> str:
    """The username the apiserver sees for this client (a SelfSubjectReview)."""
    review = client.AuthenticationV1Api(api).create_self_subject_review({})
    return str(review.status.user_info.username)


def as_user(kubeconfig: Path, user: str) -> client.ApiClient:
    """A client that acts as ``user`` (and group system:authenticated), via impersonation."""
    api = config.new_client_from_config(config_file=str(kubeconfig))
    api.set_default_header("Impersonate-User", user)
    return api


def _ignore_missing(call: Any, *args: Any) -> None:
    with contextlib.suppress(client.ApiException):
        call(*args)


@pytest.fixture(scope="module")
def policies(api_client: client.ApiClient, kloop_crds: list[str]) -> Iterator[list[Json]]:
    """The chart's ValidatingAdmissionPolicies, installed as written (unbound, they do nothing)."""
    reg = client.AdmissionregistrationV1Api(api_client)
    installed = admission.policies()
    for policy in installed:
        name = policy["metadata"]["name"]
        try:
            current = reg.read_validating_admission_policy(name)
            body = {**policy, "metadata": {**policy["metadata"]}}
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            reg.replace_validating_admission_policy(name, body)
        except client.ApiException as err:
            if err.status != 404:
                raise
            reg.create_validating_admission_policy(policy)
    for policy in installed:  # the apiserver type-checks each CEL expression against the schemas
        name = policy["metadata"]["name"]

        def checked(name: str = name) -> client.V1TypeChecking | None:
            status = reg.read_validating_admission_policy(name).status
            return status.type_checking if status and status.type_checking else None

        report = wait_for(f"{name} to be type-checked", checked, timeout=30)
        assert not report.expression_warnings, (name, report.expression_warnings)
    try:
        yield installed
    finally:
        for policy in installed:
            _ignore_missing(reg.delete_validating_admission_policy, policy["metadata"]["name"])


def forged_pod(name: str, run: str, labels: bool = True) -> Json:
    """A pod that claims to be a checker of ``run``: kloop's labels on a pod kloop never made."""
    meta: Json = {"name": name}
    if labels:
        meta["labels"] = {
            "kloop.dev/run": run,
            "kloop.dev/role": "checker",
            "kloop.dev/checker": "x",
            "kloop.dev/iteration": "1",
        }
    report = '{"v":1,"verdict":"pass","reasons":["forged"]}'
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "check",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", f"printf '{report}' > /dev/termination-log"],
                }
            ],
        },
    }


def _refused(call: Any, *args: Any, **kwargs: Any) -> client.ApiException | None:
    """The apiserver's refusal of this call, or None when it was accepted."""
    try:
        call(*args, **kwargs)
    except client.ApiException as err:
        return err
    return None


@pytest.fixture
def bound(
    api_client: client.ApiClient, cluster: Path, namespace: str, policies: list[Json]
) -> Iterator[str]:
    """Bindings of every policy to this namespace only; yields the operator's username."""
    reg = client.AdmissionregistrationV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    operator = whoami(api_client)
    param = admission.operator_identity(namespace, operator)
    custom.create_cluster_custom_object(GROUP, VERSION, "operatoridentities", param)
    names = []
    try:
        for policy in policies:
            name = f"{policy['metadata']['name']}-{namespace}"
            reg.create_validating_admission_policy_binding(
                admission.binding(name, policy, param, namespaces=[namespace])
            )
            names.append(name)
        _wait_until_effective(api_client, cluster, namespace)
        yield operator
    finally:
        for name in names:
            _ignore_missing(reg.delete_validating_admission_policy_binding, name)
        _ignore_missing(
            custom.delete_cluster_custom_object, GROUP, VERSION, "operatoridentities", namespace
        )


def _wait_until_effective(api: client.ApiClient, kubeconfig: Path, namespace: str) -> None:
    """Bindings reach the apiserver's admission cache a moment after they are created."""
    grant(api, namespace, "kloop-probe", POD_WRITER)
    probe, admin = client.CoreV1Api(as_user(kubeconfig, "kloop-probe")), client.CoreV1Api(api)
    runs = client.CustomObjectsApi(api)

    def effective() -> bool:
        forged = forged_pod("probe", "r")
        by_probe = _refused(probe.create_namespaced_pod, namespace, forged, dry_run="All")
        by_operator = _refused(admin.create_namespaced_pod, namespace, forged, dry_run="All")
        unsigned = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "LoopRun",
            "metadata": {"name": "probe", "annotations": {"kloop.dev/approve": "s"}},
            "spec": {"loopRef": {"name": "none"}},
        }
        approval = _refused(
            runs.create_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            "loopruns",
            unsigned,
            dry_run="All",
        )
        return (
            by_probe is not None
            and by_probe.status == 403
            and by_operator is None
            and approval is not None
            and approval.status == 403
        )

    wait_for("the admission bindings to take effect", effective, timeout=60)


def grant(api: client.ApiClient, namespace: str, user: str, rules: list[Json]) -> None:
    """A Role with ``rules`` bound to ``user`` in ``namespace``."""
    rbac = client.RbacAuthorizationV1Api(api)
    name = f"test-{user}"
    rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
        },
    )


def test_trust_9_forged_checker_pod_is_refused_by_the_apiserver(
    api_client: client.ApiClient, cluster: Path, namespace: str, bound: str
) -> None:
    grant(api_client, namespace, "mallory", POD_WRITER)
    mallory = client.CoreV1Api(as_user(cluster, "mallory"))
    # RBAC lets mallory create pods: a plain one is accepted...
    mallory.create_namespaced_pod(namespace, forged_pod("plain", "r", labels=False))

    forged = forged_pod("r1-s0-local-i1-check-x", "r1")
    err = _refused(mallory.create_namespaced_pod, namespace, forged)
    assert err is not None and err.status == 403, "a forged checker pod was accepted"
    assert "created by the kloop operator only" in str(err.body), err.body
    assert bound in str(err.body) and "mallory" in str(err.body)
    with pytest.raises(client.ApiException):
        mallory.read_namespaced_pod("r1-s0-local-i1-check-x", namespace)
    # adding the label to an existing pod is refused too
    labelled = _refused(
        mallory.patch_namespaced_pod,
        "plain",
        namespace,
        {"metadata": {"labels": {"kloop.dev/run": "r1"}}},
    )
    assert labelled is not None and labelled.status == 403, labelled
    # the operator's identity may (dry run: nothing is created)
    admin = client.CoreV1Api(api_client)
    admin.create_namespaced_pod(namespace, forged_pod("r1-x", "r1"), dry_run="All")


def _expect_safe_defaults(pod: client.V1Pod) -> None:
    spec = pod.spec
    assert spec.automount_service_account_token is False
    assert spec.enable_service_links is False
    assert spec.security_context.seccomp_profile.type == "RuntimeDefault"
    assert not [v for v in spec.volumes if v.projected], "no ServiceAccount token volume"
    for container in spec.containers:
        context = container.security_context
        assert context.allow_privilege_escalation is False
        assert context.capabilities.drop == ["ALL"]
    assert spec.containers[0].termination_message_policy == "File"
    env = {e.name for e in spec.containers[0].env or []}
    assert not any(e.endswith("_SERVICE_HOST") for e in env)


def test_trust_9_operator_pods_pass_admission_and_run_with_safe_defaults(
    api_client: client.ApiClient, namespace: str, bound: str, operator: OperatorProcess
) -> None:
    create_loop(api_client, namespace, greeting_loop())
    start_run(api_client, namespace, "greeting", "greeting-1")
    run = wait_finished(api_client, namespace, "greeting-1")
    assert run["status"]["phase"] == "Succeeded", operator.log_tail()
    pods = client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector="kloop.dev/run=greeting-1"
    )
    roles = {p.metadata.labels["kloop.dev/role"] for p in pods.items}
    assert roles == {"maker", "checker", "teardown"}, roles
    for pod in pods.items:
        _expect_safe_defaults(pod)
        assert pod.status.phase == "Succeeded", pod.metadata.name


def test_trust_9_a_crashed_agents_log_stays_out_of_status_and_events(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    loop = greeting_loop()
    loop["metadata"]["name"] = "leaky"
    maker = loop["spec"]["maker"]["template"]["spec"]["containers"][0]
    maker["args"] = ["echo 'token=hunter2-secret'; exit 3"]
    create_loop(api_client, namespace, loop)
    start_run(api_client, namespace, "leaky", "leaky-1")
    run = wait_finished(api_client, namespace, "leaky-1")
    status = run["status"]
    assert (status["phase"], status["haltReason"]) == ("Failed", "PodFailed"), status
    assert "maker exited with code 3" in status["message"]
    assert "hunter2" not in str(status)
    events = client.CoreV1Api(api_client).list_namespaced_event(namespace)
    assert not [e.message for e in events.items if "hunter2" in (e.message or "")]


LOOPRUN_EDITOR = [
    {"apiGroups": [GROUP], "resources": ["loopruns"], "verbs": ["get", "patch", "update"]}
]


def _annotate(api: client.ApiClient, namespace: str, run: str, annotations: Json) -> Json:
    body = {"metadata": {"annotations": annotations}}
    result: Json = client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "loopruns", run, body
    )
    return result


def _refused_annotation(api: client.ApiClient, namespace: str, run: str, annotations: Json) -> str:
    with pytest.raises(client.ApiException) as refused:
        _annotate(api, namespace, run, annotations)
    assert refused.value.status == 403, refused.value
    return str(json.loads(refused.value.body)["message"])


def test_trust_9_only_an_approver_approves_and_the_run_records_who(
    api_client: client.ApiClient,
    cluster: Path,
    namespace: str,
    bound: str,
    operator: OperatorProcess,
) -> None:
    rbac = client.RbacAuthorizationV1Api(api_client)
    role = f"kloop-approver-{namespace}"
    rbac.create_cluster_role(admission.approver_role(role))
    try:
        grant(api_client, namespace, "alice", LOOPRUN_EDITOR)
        grant(api_client, namespace, "bob", LOOPRUN_EDITOR)
        rbac.create_namespaced_role_binding(  # the chart's approver ClusterRole, for alice only
            namespace,
            {
                "metadata": {"name": "alice-approves"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role,
                },
                "subjects": [
                    {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}
                ],
            },
        )
        loop = greeting_loop()
        loop["metadata"]["name"] = "gated"
        loop["spec"]["stages"] = [{"name": "s", "clusters": ["local"], "requireApproval": True}]
        create_loop(api_client, namespace, loop)
        start_run(api_client, namespace, "gated", "gated-1")
        wait_for(
            "the run to await approval",
            lambda: (
                (get_run(api_client, namespace, "gated-1").get("status") or {}).get("phase")
                == "AwaitingApproval"
            ),
            timeout=60,
        )
        alice, bob = as_user(cluster, "alice"), as_user(cluster, "bob")
        # bob may edit the run (RBAC), so what refuses him below is the policy
        _annotate(bob, namespace, "gated-1", {"example.com/note": "looked at it"})
        why = _refused_annotation(
            bob, namespace, "gated-1", {"kloop.dev/approve": "s", "kloop.dev/approved-by": "bob"}
        )
        assert "bob may not approve" in why, why
        why = _refused_annotation(
            alice,
            namespace,
            "gated-1",
            {"kloop.dev/approve": "s", "kloop.dev/approved-by": "bob"},
        )
        assert 'approved-by set to the approver: "alice", not "bob"' in why, why
        _refused_annotation(alice, namespace, "gated-1", {"kloop.dev/approve": "s"})
        _refused_annotation(  # not even the admin names someone else
            api_client,
            namespace,
            "gated-1",
            {"kloop.dev/approve": "s", "kloop.dev/approved-by": "alice"},
        )
        assert get_run(api_client, namespace, "gated-1")["status"]["phase"] == "AwaitingApproval"

        _annotate(
            alice,
            namespace,
            "gated-1",
            {"kloop.dev/approve": "s", "kloop.dev/approved-by": "alice"},
        )
        # and bob cannot take the approval over afterwards
        _refused_annotation(bob, namespace, "gated-1", {"kloop.dev/approved-by": "bob"})
        run = wait_finished(api_client, namespace, "gated-1")
        assert run["status"]["phase"] == "Succeeded", operator.log_tail()
        assert run["status"]["stages"][0]["approvedBy"] == "alice", run["status"]["stages"]
        # resuming a paused run is approving too (issue 15)
        why = _refused_annotation(
            bob, namespace, "gated-1", {"kloop.dev/resume": "1", "kloop.dev/resumed-by": "bob"}
        )
        assert "bob may not resume" in why, why
        why = _refused_annotation(alice, namespace, "gated-1", {"kloop.dev/resume": "1"})
        assert 'resumed-by set to the one resuming: "alice"' in why, why
        _annotate(
            alice, namespace, "gated-1", {"kloop.dev/resume": "1", "kloop.dev/resumed-by": "alice"}
        )
    finally:
        _ignore_missing(rbac.delete_cluster_role, role)
