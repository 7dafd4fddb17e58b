"""Agent pods of a remote target get a minted token, never the cluster Secret's credentials.

The operator runs as a process with exactly the chart's RBAC and a cluster Secret for the
harness's extra apiserver ``b``; a one-stage Loop targets ``b``. Pods run in the management
cluster (hub and spoke) and cannot reach ``b`` from their network yet, so the test uses the pod's
kubeconfig Secret from the host: it acts as the agent ServiceAccount in ``b``, is gone when the
pod ends, and ``b``'s admin credentials appear in no pod spec, run status, Event or operator log
line.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from e2e.helpers import wait_for
from e2e.loops import create_loop, events_for, get_run, run_pods, start_run, wait_finished
from e2e.operator_process import OperatorProcess
from e2e.tests.test_rbac import CLUSTER_RULES, ROLE_RULES, denials, load_rules, operator_identity

pytestmark = pytest.mark.e2e

AGENTS = "kloop-agents"
BUSYBOX = "kloop.local/busybox:1.0"


def _pod_template(script: str) -> dict[str, Any]:
    return {
        "spec": {
            "containers": [
                {
                    "name": "agent",
                    "image": BUSYBOX,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", script],
                }
            ]
        }
    }


def fleet_loop() -> dict[str, Any]:
    """One stage on cluster b; the maker checks its kubeconfig is the token-only one."""
    maker = (
        'set -e; test "$KUBECONFIG" = /kloop/target/kubeconfig; grep -q "token:" "$KUBECONFIG"; '
        "! grep -q client-key-data \"$KUBECONFIG\"; sleep 4; printf '%s' "
        '\'{"v":1,"outcome":"changed","summary":"saw the target kubeconfig"}\' '
        "> /dev/termination-log"
    )
    checker = (
        'grep -q "token:" "$KUBECONFIG" && '
        'printf \'{"v":1,"verdict":"pass","reasons":["ok"]}\' > /dev/termination-log'
    )
    return {
        "apiVersion": "kloop.dev/v1alpha1",
        "kind": "Loop",
        "metadata": {"name": "fleet"},
        "spec": {
            "goal": "touch cluster b",
            "maker": {"timeoutSeconds": 120, "template": _pod_template(maker)},
            "checkers": [{"name": "seen", "kind": "pod", "template": _pod_template(checker)}],
            "stages": [{"name": "canary", "clusters": ["b"]}],
            "budget": {"maxIterations": 1},
        },
    }


@pytest.fixture
def agent_sa(extra_cluster: Path) -> Iterator[str]:
    """A ServiceAccount for agents in cluster b (it has no controller-manager to make one)."""
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(extra_cluster)))
    name = f"agent-{uuid.uuid4().hex[:6]}"
    try:
        core.create_namespace({"metadata": {"name": AGENTS}})
    except client.ApiException as err:
        if err.status != 409:
            raise
    core.create_namespaced_service_account(AGENTS, {"metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespaced_service_account(name, AGENTS)


def _admin_credentials(kubeconfig: Path) -> list[str]:
    """Admin credentials of b as they could leak: base64 as in the kubeconfig, and a PEM line."""
    user = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]
    found = []
    for value in user.values():
        found.append(value)
        pem = base64.b64decode(value).decode().splitlines()
        found.append(max(pem, key=len))  # a full line of key or certificate material
    return found


def test_remote_target_pods_get_a_minted_token_kubeconfig_deleted_when_they_end(
    cluster: Path,
    api_client: client.ApiClient,
    kloop_crds: list[str],
    namespace: str,
    extra_cluster: Path,
    agent_sa: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core = client.CoreV1Api(api_client)
    # the test namespace is both the operator's namespace (cluster Secrets) and the run's
    monkeypatch.setenv("KLOOP_OPERATOR_NAMESPACE", namespace)
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {
                "name": "b",
                "labels": {"kloop.dev/cluster": "true"},
                "annotations": {
                    "kloop.dev/allowed-namespaces": namespace,
                    "kloop.dev/agent-service-account": f"{AGENTS}/{agent_sa}",
                },
            },
            "stringData": {"kubeconfig": extra_cluster.read_text()},
        },
    )
    # the operator runs with exactly the chart's RBAC (secrets: create and delete, no reads)
    stack = contextlib.ExitStack()
    sa_kubeconfig = stack.enter_context(
        operator_identity(
            api_client,
            cluster,
            namespace,
            tmp_path / "sa.kubeconfig",
            load_rules(CLUSTER_RULES),
            load_rules(ROLE_RULES),
        )
    )
    operator = OperatorProcess(sa_kubeconfig, tmp_path / "operator.log", [namespace])
    stack.callback(operator.stop)
    operator.start()
    maker = "fleet-1-s0-b-i1-maker"
    try:
        create_loop(api_client, namespace, fleet_loop())
        start_run(api_client, namespace, "fleet", "fleet-1")

        def running_maker_secret() -> client.V1Secret | None:
            pods = {p.metadata.name: p for p in run_pods(api_client, namespace, "fleet-1")}
            if maker not in pods or pods[maker].status.phase != "Running":
                return None
            return core.read_namespaced_secret(f"{maker}-target", namespace)

        secret = wait_for("the maker running with its Secret", running_maker_secret, timeout=60)
        pod = core.read_namespaced_pod(maker, namespace)
        annotations = pod.metadata.annotations
        assert annotations["kloop.dev/target-secret-uid"] == secret.metadata.uid
        assert annotations["kloop.dev/token-expires-at"]
        assert secret.metadata.owner_references[0].kind == "LoopRun"
        kubeconfig = tmp_path / "pod.kubeconfig"
        kubeconfig.write_text(base64.b64decode(secret.data["kubeconfig"]).decode())
        agent = config.new_client_from_config(config_file=str(kubeconfig))
        review = client.AuthenticationV1Api(agent).create_self_subject_review({"metadata": {}})
        assert review.status.user_info.username == f"system:serviceaccount:{AGENTS}:{agent_sa}"

        run = wait_finished(api_client, namespace, "fleet-1", timeout=120)
        assert run["status"]["phase"] == "Succeeded", (run["status"], operator.log_tail())
        for pod_name in (maker, "fleet-1-s0-b-i1-check-seen"):

            def secret_gone(pod_name: str = pod_name) -> bool:
                try:
                    core.read_namespaced_secret(f"{pod_name}-target", namespace)
                except client.ApiException as err:
                    return err.status == 404
                return False

            wait_for(f"{pod_name}'s kubeconfig Secret deleted", secret_gone, timeout=30)
    finally:
        stack.close()

    leaks = _admin_credentials(extra_cluster)
    pods = json.dumps(
        [
            api_client.sanitize_for_serialization(p)
            for p in run_pods(api_client, namespace, "fleet-1")
        ]
    )
    status = json.dumps(get_run(api_client, namespace, "fleet-1").get("status"))
    events = json.dumps([e.message for e in events_for(api_client, namespace, "fleet-1")])
    log = operator.log_path.read_text(errors="replace")
    for where, text in (("pods", pods), ("status", status), ("events", events), ("log", log)):
        assert not [c for c in leaks if c in text], f"b's admin credential in {where}"
    assert "token minted for the pod" in log
    assert denials(log) == [], "\n".join(denials(log))
