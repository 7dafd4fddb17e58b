"""The chart's RBAC, proven on a real cluster: enough to run a Loop, and nothing more.

The operator runs as a ServiceAccount bound to exactly the rules in
``charts/kloop/files/clusterrole-rules.yaml`` (cluster-wide) and ``role-rules.yaml`` (the
operator's namespace), authenticating with a TokenRequest token, as it would in its pod.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from e2e.helpers import wait_for
from e2e.loops import GROUP, VERSION, create_loop, greeting_loop, start_run, wait_finished
from e2e.operator_process import OperatorProcess
from e2e.webhook import receiver

pytestmark = pytest.mark.e2e

CHART = Path(__file__).resolve().parents[2] / "charts" / "kloop"
CLUSTER_RULES = CHART / "files" / "clusterrole-rules.yaml"
ROLE_RULES = CHART / "files" / "role-rules.yaml"
SERVICE_ACCOUNT = "kloop-operator"
# What an operator log shows when a call was denied (ours, kopf's, or the client's wording).
DENIED = ("403", "forbidden", "not enough permissions")

Json = dict[str, Any]


def load_rules(path: Path) -> list[Json]:
    """A rules file of the chart, as the list of PolicyRules it renders into the role."""
    rules: list[Json] = yaml.safe_load(path.read_text())
    return rules


def _ignore_missing(call: Any, *args: Any) -> None:
    with contextlib.suppress(client.ApiException):
        call(*args)


def sa_kubeconfig(admin_kubeconfig: Path, token: str, namespace: str, path: Path) -> Path:
    """A kubeconfig with the admin's server and CA but the ServiceAccount's bearer token."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "target", "cluster": cluster["cluster"]}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [
            {
                "name": "operator",
                "context": {"cluster": "target", "user": SERVICE_ACCOUNT, "namespace": namespace},
            }
        ],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def operator_identity(
    api: client.ApiClient,
    admin_kubeconfig: Path,
    namespace: str,
    kubeconfig: Path,
    cluster_rules: list[Json],
    role_rules: list[Json],
) -> Iterator[Path]:
    """A ServiceAccount with these rules (the namespace standing in for the release namespace).

    Yields a kubeconfig authenticating as it; the cluster-scoped role and binding are removed
    afterwards (the namespace takes the rest with it).
    """
    rbac = client.RbacAuthorizationV1Api(api)
    core = client.CoreV1Api(api)
    name = f"kloop-rbac-test-{uuid.uuid4().hex[:8]}"
    subject = [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": namespace}]
    core.create_namespaced_service_account(namespace, {"metadata": {"name": SERVICE_ACCOUNT}})
    try:
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": cluster_rules})
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
                "subjects": subject,
            }
        )
        rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": role_rules})
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": subject,
            },
        )
        token = core.create_namespaced_service_account_token(
            SERVICE_ACCOUNT,
            namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
            ),
        ).status.token
        yield sa_kubeconfig(admin_kubeconfig, token, namespace, kubeconfig)
    finally:
        _ignore_missing(rbac.delete_cluster_role_binding, name)
        _ignore_missing(rbac.delete_cluster_role, name)


@pytest.fixture
def sa_config(
    cluster: Path,
    api_client: client.ApiClient,
    kloop_crds: list[str],
    namespace: str,
    tmp_path: Path,
) -> Iterator[Path]:
    """A kubeconfig for the operator's ServiceAccount with exactly the chart's rules."""
    with operator_identity(
        api_client,
        cluster,
        namespace,
        tmp_path / "sa.kubeconfig",
        load_rules(CLUSTER_RULES),
        load_rules(ROLE_RULES),
    ) as path:
        yield path


def can(api: client.ApiClient, verb: str, resource: str, group: str = "", **attrs: str) -> bool:
    """Ask the apiserver whether the caller of ``api`` may do this (SelfSubjectAccessReview)."""
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        {
            "spec": {
                "resourceAttributes": {"verb": verb, "resource": resource, "group": group} | attrs
            }
        }
    )
    return bool(review.status.allowed)


def denials(log: str) -> list[str]:
    """The log lines that show a denied API call; timestamps are skipped (milliseconds: 403)."""
    lines = []
    for line in log.splitlines():
        text = re.sub(r'^\{"ts": "[^"]*", ', "{", line).lower()
        if any(d in text for d in DENIED):
            lines.append(line)
    return lines


def test_chart_templates_render_the_rule_files_the_test_uses() -> None:
    assert (
        '.Files.Get "files/clusterrole-rules.yaml"'
        in (CHART / "templates" / "clusterrole.yaml").read_text()
    )
    assert '.Files.Get "files/role-rules.yaml"' in (CHART / "templates" / "role.yaml").read_text()
    for path in (CLUSTER_RULES, ROLE_RULES):
        for rule in load_rules(path):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"wildcard {key} in {path.name}: {rule}"
            assert not rule.get("resourceNames") and not rule.get("nonResourceURLs")
    # cluster-wide, Secrets: created and deleted (minted-token kubeconfigs), read by name (notify
    # URLs); never listed, watched, updated or patched
    secret_verbs = {
        v for r in load_rules(CLUSTER_RULES) if "secrets" in r["resources"] for v in r["verbs"]
    }
    assert secret_verbs == {"create", "delete", "get"}


def _slow_loop() -> Json:
    """A Loop whose maker works for minutes: a run of it is aborted mid-iteration."""
    loop = greeting_loop()
    loop["metadata"]["name"] = "slow"
    loop["spec"]["maker"]["template"]["spec"]["containers"][0]["args"] = ["sleep 300"]
    return loop


def test_operator_runs_and_aborts_loops_with_only_the_chart_rbac(
    api_client: client.ApiClient,
    namespace: str,
    sa_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the test namespace plays the release namespace, where target-cluster Secrets live
    monkeypatch.setenv("KLOOP_OPERATOR_NAMESPACE", namespace)
    operator = OperatorProcess(
        sa_config, tmp_path / "operator.log", [namespace], ["--allow-egress-cidr", "127.0.0.0/8"]
    )
    core = client.CoreV1Api(api_client)
    hook = contextlib.ExitStack()
    webhook = hook.enter_context(receiver())
    core.create_namespaced_secret(  # secrets get: the notify URL is read by name
        namespace, {"metadata": {"name": "hook"}, "stringData": {"url": webhook.url}}
    )
    greeting = greeting_loop()
    greeting["spec"]["notify"] = [
        {"name": "ops", "urlSecretRef": {"name": "hook", "key": "url"}, "events": ["succeeded"]}
    ]
    custom = client.CustomObjectsApi(api_client)
    maker = "slow-1-s0-local-i1-maker"
    operator.start()
    try:
        create_loop(api_client, namespace, greeting)
        create_loop(api_client, namespace, _slow_loop())
        start_run(api_client, namespace, "greeting", "greeting-1")
        start_run(api_client, namespace, "slow", "slow-1")

        def maker_running() -> bool:
            try:
                return bool(core.read_namespaced_pod(maker, namespace).status.phase == "Running")
            except client.ApiException:
                return False

        wait_for("the slow maker to run", maker_running, timeout=120)
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "loopruns",
            "slow-1",
            {"metadata": {"annotations": {"kloop.dev/abort": "true"}}},
        )
        aborted = wait_finished(api_client, namespace, "slow-1")["status"]
        assert (aborted["phase"], aborted["haltReason"]) == ("Halted", "Aborted"), aborted

        def maker_deleted() -> bool:  # pods delete: the operator stops the aborted maker
            try:
                pod = core.read_namespaced_pod(maker, namespace)
            except client.ApiException as err:
                return err.status == 404
            return pod.metadata.deletion_timestamp is not None

        wait_for("the aborted maker to be deleted", maker_deleted, timeout=30)
        run = wait_finished(api_client, namespace, "greeting-1")
        assert run["status"]["phase"] == "Succeeded", operator.log_tail()
        loop = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "loops", "greeting")
        assert loop["status"]["lastRun"] == "greeting-1", "loops/status patch went through"
        wait_for("the succeeded notification", lambda: webhook.events(), timeout=30)
        assert webhook.events() == [("succeeded", "default")], operator.log_tail()
        time.sleep(1)  # let anything still in flight reach the log
    finally:
        operator.stop()
        hook.close()
    log = operator.log_path.read_text(errors="replace")
    assert denials(log) == [], "\n".join(denials(log))


def test_operator_service_account_is_least_privilege(
    cluster: Path, api_client: client.ApiClient, namespace: str, sa_config: Path
) -> None:
    sa = config.new_client_from_config(config_file=str(sa_config))
    # what it needs
    assert can(sa, "watch", "loopruns", GROUP)
    assert can(sa, "update", "loopruns", GROUP, subresource="status", namespace=namespace)
    assert can(sa, "create", "pods", namespace=namespace)
    assert can(sa, "watch", "loops", GROUP), "the Loop controller, triggers"
    assert can(sa, "create", "loopruns", GROUP, namespace=namespace), "scheduled and triggered runs"
    assert can(sa, "patch", "loopruns", GROUP, namespace=namespace), "Replace aborts a run"
    assert can(sa, "delete", "loopruns", GROUP, namespace=namespace), "history limits"
    assert can(sa, "list", "secrets", namespace=namespace), "target clusters, own namespace"
    assert can(sa, "create", "secrets", namespace="team-a"), "minted kubeconfigs, run namespace"
    assert can(sa, "delete", "secrets", namespace="team-a"), "... deleted when the pod ends"
    # what it must not do
    assert can(sa, "get", "secrets", namespace=namespace), "notify URLs, by name"
    forbidden = [
        ("list", "secrets", ""),
        ("watch", "secrets", ""),
        ("update", "secrets", ""),
        ("patch", "secrets", ""),
        ("deletecollection", "secrets", ""),
        ("delete", "namespaces", ""),
        ("create", "namespaces", ""),
        ("create", "pods/exec", ""),
        ("update", "pods", ""),
        ("deletecollection", "pods", ""),
        ("delete", "configmaps", ""),
        ("create", "loops", GROUP),
        ("update", "loops", GROUP),
        ("patch", "loops", GROUP),
        ("delete", "loops", GROUP),
        ("update", "loopruns", GROUP),
        ("create", "customresourcedefinitions", "apiextensions.k8s.io"),
        ("update", "customresourcedefinitions", "apiextensions.k8s.io"),
        ("create", "clusterrolebindings", "rbac.authorization.k8s.io"),
        ("escalate", "clusterroles", "rbac.authorization.k8s.io"),
        ("create", "serviceaccounts/token", ""),
        ("create", "deployments", "apps"),
    ]
    allowed = [(v, r, g) for v, r, g in forbidden if can(sa, v, r, g)]
    assert allowed == [], f"the operator's ServiceAccount may {allowed}"
    for verb in ("list", "watch"):
        assert not can(sa, verb, "secrets", namespace="kube-system")
    # and the real calls are refused
    core = client.CoreV1Api(sa)
    with pytest.raises(client.ApiException) as listed:
        core.list_secret_for_all_namespaces()
    assert listed.value.status == 403
    with pytest.raises(client.ApiException) as deleted:
        core.delete_namespace(namespace, dry_run="All")
    assert deleted.value.status == 403
