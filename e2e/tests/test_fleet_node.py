"""A pod created in an extra cluster's API runs on that cluster's own node (placement: target).

Proves the second node of the local fleet: the pod exists only in fleet-b's API, ran on kubelet
``fleet-b-node`` (its containerd has the container, the main node's has not), its termination
message and logs come through fleet-b's apiserver, and the main node keeps running pods meanwhile.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.cluster import images, local, node, pki
from e2e.fleet import TargetCluster, ensure_service_account, target_client
from e2e.helpers import wait_for

pytestmark = pytest.mark.e2e

NAMESPACE = "node-tests"  # reused: fleet-b has no namespace controller to finish a deletion
ACCOUNT = "runner"


def _pod(name: str, marker: str, account: str | None) -> client.V1Pod:
    script = f"echo log-{marker}; echo done-{marker} > /dev/termination-log"
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            restart_policy="Never",
            service_account_name=account,
            automount_service_account_token=False,
            containers=[
                client.V1Container(
                    name="main",
                    image=images.BUSYBOX_IMAGE,
                    image_pull_policy="IfNotPresent",
                    command=["sh", "-c", script],
                )
            ],
        ),
    )


def _finished(core: client.CoreV1Api, name: str, namespace: str) -> client.V1Pod | None:
    pod = core.read_namespaced_pod(name, namespace)
    return pod if pod.status.phase in ("Succeeded", "Failed") else None


def _containers(socket: Path) -> str:
    proc = subprocess.run(
        ["ctr", "--address", str(socket), "-n", "k8s.io", "containers", "ls", "-q"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def _gone(core: client.CoreV1Api, name: str, namespace: str) -> bool:
    try:
        core.read_namespaced_pod(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return True
        raise
    return False


def test_a_pod_created_in_an_extra_cluster_runs_on_its_own_node(
    api_client: client.ApiClient, namespace: str, fleet_node: TargetCluster
) -> None:
    core_b = client.CoreV1Api(target_client(fleet_node))
    core_main = client.CoreV1Api(api_client)
    ensure_service_account(fleet_node, NAMESPACE, ACCOUNT)
    marker = uuid.uuid4().hex[:8]
    name = f"on-b-{marker}"
    core_b.create_namespaced_pod(NAMESPACE, _pod(name, marker, ACCOUNT))
    core_main.create_namespaced_pod(namespace, _pod(f"on-main-{marker}", f"m{marker}", None))
    try:
        pod = wait_for("the pod on fleet-b-node", lambda: _finished(core_b, name, NAMESPACE), 90)
        assert pod.status.phase == "Succeeded", pod.status
        assert pod.spec.node_name == node.node_name("fleet-b") == "fleet-b-node"
        assert pod.status.host_ip == node.NODE_IP
        assert pod.status.pod_ip.startswith("10.89."), pod.status.pod_ip
        state = pod.status.container_statuses[0].state.terminated
        assert state.message.strip() == f"done-{marker}"
        logs = core_b.read_namespaced_pod_log(name, NAMESPACE, container="main")
        assert logs.strip() == f"log-{marker}"

        container_id = pod.status.container_statuses[0].container_id.split("://", 1)[1]
        assert container_id in _containers(node.containerd_socket("fleet-b"))
        assert container_id not in _containers(local.CONTAINERD_SOCKET)

        with pytest.raises(ApiException) as missing:
            core_main.read_namespaced_pod(name, NAMESPACE)
        assert missing.value.status == 404
        everywhere = core_main.list_pod_for_all_namespaces(field_selector=f"metadata.name={name}")
        assert everywhere.items == []

        main_pod = wait_for(
            "the pod on the main node",
            lambda: _finished(core_main, f"on-main-{marker}", namespace),
            90,
        )
        assert main_pod.status.phase == "Succeeded", main_pod.status
        assert main_pod.spec.node_name == pki.NODE_NAME
        assert main_pod.status.pod_ip.startswith("10.88."), main_pod.status.pod_ip
        main_logs = core_main.read_namespaced_pod_log(f"on-main-{marker}", namespace)
        assert main_logs.strip() == f"log-m{marker}"
        nodes_b = [n.metadata.name for n in core_b.list_node().items]
        nodes_main = [n.metadata.name for n in core_main.list_node().items]
        assert nodes_b == ["fleet-b-node"]
        assert nodes_main == [pki.NODE_NAME]
    finally:
        core_b.delete_namespaced_pod(name, NAMESPACE)
    wait_for("the pod deleted by fleet-b-node", lambda: _gone(core_b, name, NAMESPACE), 60)
