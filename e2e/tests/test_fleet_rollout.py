"""The fleet end to end: a staged rollout across real clusters, gated by verdicts and drift.

The local fleet is three extra apiservers (``fleet-a/b/c``) that agent pods reach on the bridge
address. Makers and checkers run in the management cluster with the kit image (kubectl) and act
on their target through the kubeconfig kloop mints for them; the operator measures drift itself.
The operator runs as a host process whose namespace for cluster Secrets is the test's own.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.cluster.kit import kit_image
from e2e.fleet import TargetCluster, grant_agent, registered, target_client
from e2e.helpers import wait_for
from e2e.loops import (
    GROUP,
    VERSION,
    create_loop,
    get_run,
    memory,
    run_pods,
    start_run,
    wait_finished,
)
from e2e.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
AGENTS = "kloop-agents"
AGENT = "agent"
WORK = "fleet-demo"  # the namespace makers change in their target
GREETING = "hello, world"


def _grant_agent(target: TargetCluster) -> None:
    grant_agent(target, AGENTS, AGENT, WORK)


def _greeting(target: TargetCluster) -> str | None:
    try:
        cm = client.CoreV1Api(target_client(target)).read_namespaced_config_map("greeting", WORK)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return str((cm.data or {}).get("greeting"))


def _clean(target: TargetCluster) -> None:
    try:
        client.CoreV1Api(target_client(target)).delete_namespaced_config_map("greeting", WORK)
    except ApiException as err:
        if err.status != 404:
            raise


@pytest.fixture
def fleet_env(
    fleet: dict[str, TargetCluster],
    cluster: Path,
    kloop_crds: list[str],
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> Iterator[dict[str, TargetCluster]]:
    """The fleet registered for this namespace, agents granted, and an operator running."""
    core = client.CoreV1Api(api_client)
    for target in fleet.values():
        _grant_agent(target)
        _clean(target)
        secret = registered(
            target,
            namespace,
            **{
                "kloop.dev/allowed-namespaces": namespace,
                "kloop.dev/agent-service-account": f"{AGENTS}/{AGENT}",
            },
        )
        core.create_namespaced_secret(namespace, secret)
    operator = OperatorProcess(  # the cluster Secrets live in the test's namespace
        cluster,
        tmp_path / "operator.log",
        [namespace],
        env={"KLOOP_OPERATOR_NAMESPACE": namespace},
    )
    operator.start()
    try:
        yield fleet
    finally:
        operator.stop()
        print(f"--- operator log (tail) ---\n{operator.log_tail(80)}")
        for target in fleet.values():
            _clean(target)


def _kit(script: str) -> Json:
    return {
        "spec": {
            "containers": [
                {
                    "name": "agent",
                    "image": kit_image(),
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", script],
                }
            ]
        }
    }


MAKER = f"""
set -e
kubectl create configmap greeting -n {WORK} --from-literal=greeting='{GREETING}' \\
  --dry-run=client -o yaml | kubectl apply -f -
sleep "${{HOLD:-0}}"
kloop-agent report maker --outcome changed --summary "greeting set in $KLOOP_CLUSTER" --tokens 10
"""

CHECKER = f"""
got=$(kubectl get configmap greeting -n {WORK} -o jsonpath='{{.data.greeting}}')
echo "$KLOOP_CLUSTER says $got"
if [ "$got" = '{GREETING}' ]; then
  kloop-agent report checker --verdict pass --reason "$KLOOP_CLUSTER says $got"
else
  kloop-agent report checker --verdict fail --reason "$KLOOP_CLUSTER says '$got'"
fi
"""

DESIRED = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "greeting", "namespace": WORK},
    "data": {"greeting": GREETING},
}


def rollout_loop(stages: list[Json], hold: int = 0, max_iterations: int = 2) -> Json:
    maker = _kit(MAKER)
    maker["spec"]["containers"][0]["env"] = [{"name": "HOLD", "value": str(hold)}]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Loop",
        "metadata": {"name": "rollout"},
        "spec": {
            "goal": f"Every cluster's {WORK}/greeting ConfigMap says {GREETING!r}.",
            "maker": {"timeoutSeconds": 120, "template": maker},
            "checkers": [{"name": "readback", "kind": "pod", "template": _kit(CHECKER)}],
            "budget": {"maxIterations": max_iterations},
            "stages": stages,
        },
    }


def _approve(api: client.ApiClient, namespace: str, run: str, stage: str) -> None:
    annotations = {"kloop.dev/approve": stage, "kloop.dev/approved-by": "fleet-test"}
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "loopruns", run, {"metadata": {"annotations": annotations}}
    )


def _phase(api: client.ApiClient, namespace: str, run: str) -> str | None:
    return (get_run(api, namespace, run).get("status") or {}).get("phase")


def test_a_staged_rollout_reaches_every_target_and_waits_for_approval(
    api_client: client.ApiClient, namespace: str, fleet_env: dict[str, TargetCluster]
) -> None:
    drift: Json = {"resources": [DESIRED], "maxDriftedObjects": 0}
    stages: list[Json] = [
        {"name": "canary", "clusters": ["fleet-a"], "drift": drift},
        {
            "name": "prod",
            "clusters": ["fleet-b", "fleet-c"],
            "requireApproval": True,
            "drift": drift,
        },
    ]
    create_loop(api_client, namespace, rollout_loop(stages))
    start_run(api_client, namespace, "rollout", "roll-1")
    wait_for(
        "the prod stage to await approval",
        lambda: _phase(api_client, namespace, "roll-1") == "AwaitingApproval",
        timeout=180,
    )
    assert _greeting(fleet_env["fleet-a"]) == GREETING
    assert _greeting(fleet_env["fleet-b"]) is None, "prod is untouched before the approval"
    _approve(api_client, namespace, "roll-1", "prod")
    status = wait_finished(api_client, namespace, "roll-1", timeout=240)["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    for name in ("fleet-a", "fleet-b", "fleet-c"):
        assert _greeting(fleet_env[name]) == GREETING, name
    assert "fleet-demo" not in {
        ns.metadata.name for ns in client.CoreV1Api(api_client).list_namespace().items
    }, "nothing was changed in the management cluster"
    prod = status["stages"][1]
    assert prod["approvedBy"] == "fleet-test"
    targets = {c["name"]: c for stage in status["stages"] for c in stage["clusters"]}
    for name, progress in targets.items():
        assert progress["state"] == "Passed", (name, progress)
        assert progress["driftedObjects"] == 0, name
        assert progress.get("tokenExpiresAt"), name
    assert status["clustersPassed"] == "2/2"
    checks = {r["cluster"]: r["checkers"] for r in status["iterations"]}
    assert {c["name"] for c in checks["fleet-b"]} == {"readback", "drift"}
    pods = run_pods(api_client, namespace, "roll-1")
    assert all(p.metadata.namespace == namespace for p in pods), "agents run in the hub"


@pytest.mark.parametrize("on_exceeded", ["Halt", "Iterate"])
def test_an_object_changed_by_hand_mid_run_is_drift(
    api_client: client.ApiClient,
    namespace: str,
    fleet_env: dict[str, TargetCluster],
    on_exceeded: str,
) -> None:
    target = fleet_env["fleet-b"]
    drift = {"resources": [DESIRED], "maxDriftedObjects": 0, "onExceeded": on_exceeded}
    stages = [{"name": "prod", "clusters": ["fleet-b"], "drift": drift}]
    loop = rollout_loop(stages, hold=12)
    create_loop(api_client, namespace, loop)
    run = f"drift-{uuid.uuid4().hex[:4]}"
    start_run(api_client, namespace, "rollout", run)
    wait_for("the maker's change", lambda: _greeting(target) == GREETING, timeout=120)
    client.CoreV1Api(target_client(target)).patch_namespaced_config_map(
        "greeting",
        WORK,
        {"data": {"greeting": "changed by hand"}},
        field_manager="kubectl-edit",
    )
    status = wait_finished(api_client, namespace, run, timeout=240)["status"]
    # memory is written right after the final status: wait until the run says it is there
    recorded = len(status["iterations"])
    wait_for(
        "the run's iterations in memory",
        lambda: (
            (get_run(api_client, namespace, run)["status"].get("memoryRecordedThrough") or 0)
            >= recorded
        ),
        timeout=30,
    )
    _, log = memory(api_client, namespace, "rollout")
    if on_exceeded == "Halt":
        assert (status["phase"], status["haltReason"]) == ("Halted", "DriftExceeded"), status
        progress = status["stages"][0]["clusters"][0]
        assert progress["driftedObjects"] == 1
        assert any("ConfigMap fleet-demo/greeting" in d for d in progress["driftDetails"])
        assert "ConfigMap fleet-demo/greeting" in str(log["entries"][-1]["verdicts"])
    else:
        assert status["phase"] == "Succeeded", status.get("message")
        first, second = status["iterations"][0], status["iterations"][1]
        drift_verdict = next(c for c in first["checkers"] if c["name"] == "drift")
        assert drift_verdict["verdict"] == "fail"
        assert first["decision"] == "iterate" and second["decision"] == "succeed"
        assert _greeting(target) == GREETING, "the next maker repaired it"


def _unreachable_secret(namespace: str) -> Json:
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    return {
        "metadata": {
            "name": "down",
            "namespace": namespace,
            "labels": {"kloop.dev/cluster": "true"},
            "annotations": {
                "kloop.dev/allowed-namespaces": namespace,
                "kloop.dev/agent-service-account": f"{AGENTS}/{AGENT}",
            },
        },
        "stringData": {"kubeconfig": yaml.safe_dump(kubeconfig)},
    }


@pytest.mark.parametrize(
    ("unusable", "reason", "says"),
    [
        ("nowhere", "ClusterUnavailable", "no cluster Secret named 'nowhere'"),
        ("down", "ClusterUnavailable", "unreachable"),
        ("fleet-c", "ClusterNotAllowed", "allowed-namespaces"),
    ],
    ids=["no-secret", "apiserver-down", "not-allowed"],
)
def test_a_cluster_the_run_cannot_use_gives_its_reason_and_no_pod(
    api_client: client.ApiClient,
    namespace: str,
    fleet_env: dict[str, TargetCluster],
    unusable: str,
    reason: str,
    says: str,
) -> None:
    core = client.CoreV1Api(api_client)
    if unusable == "down":
        core.create_namespaced_secret(namespace, _unreachable_secret(namespace))
    if unusable == "fleet-c":
        core.patch_namespaced_secret(
            "fleet-c",
            namespace,
            {"metadata": {"annotations": {"kloop.dev/allowed-namespaces": "team-b-*"}}},
        )
    create_loop(api_client, namespace, rollout_loop([{"name": "one", "clusters": [unusable]}]))
    start_run(api_client, namespace, "rollout", "refused")
    status = wait_finished(api_client, namespace, "refused", timeout=60)["status"]
    assert (status["phase"], status["haltReason"]) == ("Failed", reason), status
    progress = status["stages"][0]["clusters"][0]
    assert progress["reason"] == reason and says in progress["message"], progress
    assert run_pods(api_client, namespace, "refused") == [], "no pod anywhere"
    for target in fleet_env.values():
        assert _greeting(target) is None


def test_an_inconclusive_checker_pauses_the_stage_until_resumed(
    api_client: client.ApiClient, namespace: str, fleet_env: dict[str, TargetCluster]
) -> None:
    loop = rollout_loop([{"name": "canary", "clusters": ["local"]}])
    loop["spec"]["maker"]["template"] = _kit(
        "kloop-agent report maker --outcome changed --summary done"
    )
    loop["spec"]["checkers"][0]["template"] = _kit(
        'kloop-agent report checker --verdict inconclusive --reason "no traffic to judge yet"'
    )
    create_loop(api_client, namespace, loop)
    start_run(api_client, namespace, "rollout", "unsure")
    wait_for("the pause", lambda: _phase(api_client, namespace, "unsure") == "Paused", 120)
    status = get_run(api_client, namespace, "unsure")["status"]
    assert "kloop.dev/resume=1" in status["message"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Paused"] == "True"
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "loopruns",
        "unsure",
        {"metadata": {"annotations": {"kloop.dev/resume": "1"}}},
    )
    status = wait_finished(api_client, namespace, "unsure", timeout=60)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["stages"][0]["clusters"][0]["resumedBy"].endswith("(unverified)")


def test_a_checker_with_placement_target_runs_on_its_clusters_own_node(
    api_client: client.ApiClient,
    namespace: str,
    fleet_env: dict[str, TargetCluster],
    fleet_node: TargetCluster,
) -> None:
    target = fleet_node  # fleet-b, with a kubelet of its own: fleet-b-node
    loop = rollout_loop([{"name": "prod", "clusters": ["fleet-b"]}])
    checker = loop["spec"]["checkers"][0]
    checker["name"] = "inside"
    checker["placement"] = "Target"
    create_loop(api_client, namespace, loop)
    start_run(api_client, namespace, "rollout", "placed")
    status = wait_finished(api_client, namespace, "placed", timeout=240)["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    run_uid = get_run(api_client, namespace, "placed")["metadata"]["uid"]
    name = f"placed-s0-fleet-b-i1-check-inside-{run_uid[:8]}"
    core_b = client.CoreV1Api(target_client(target))
    pod = core_b.read_namespaced_pod(name, AGENTS)
    assert pod.spec.node_name == "fleet-b-node", "it ran on the target cluster's own node"
    assert pod.spec.service_account_name == AGENT
    assert "fleet-b says hello, world" in core_b.read_namespaced_pod_log(name, AGENTS)
    verdict = status["iterations"][0]["checkers"][0]
    assert (verdict["name"], verdict["verdict"]) == ("inside", "pass")
    assert name not in {p.metadata.name for p in run_pods(api_client, namespace, "placed")}

    def deleted(read: Any, what: str) -> bool:
        try:
            read(what, AGENTS)
        except ApiException as err:
            return err.status == 404
        return False

    for read, what in (
        (core_b.read_namespaced_secret, f"{name}-target"),
        (core_b.read_namespaced_config_map, f"{name}-in"),
    ):
        wait_for(f"{what} deleted", functools.partial(deleted, read, what), 30)
    wait_for(  # the pass after the clean-up forgets the pod
        "placedPods emptied",
        lambda: get_run(api_client, namespace, "placed")["status"].get("placedPods", []) == [],
        30,
    )
    core_b.delete_namespaced_pod(name, AGENTS)  # placed pods are not garbage-collected
