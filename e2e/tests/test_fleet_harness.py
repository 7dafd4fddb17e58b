"""The local fleet: extra clusters pods reach, their Secrets, TokenRequest and the kit image."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.cluster import kit, pki
from e2e.cluster.paths import PKI
from e2e.fleet import TargetCluster, ensure_service_account, target_client
from e2e.helpers import run_pod

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def _configmap_exists(api: client.ApiClient, name: str) -> bool:
    try:
        client.CoreV1Api(api).read_namespaced_config_map(name, "default")
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def _token_client(server: str, token: str) -> client.ApiClient:
    conf = client.Configuration()
    conf.host = server
    conf.ssl_ca_cert = str(PKI / "ca.crt")
    conf.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(conf)


def _who_am_i(api: client.ApiClient) -> str:
    review = client.AuthenticationV1Api(api).create_self_subject_review(
        client.V1SelfSubjectReview(metadata=client.V1ObjectMeta())
    )
    return str(review.status.user_info.username)


def test_a_pod_acts_on_an_extra_cluster_through_its_kubeconfig_with_the_kit_image(
    api_client: client.ApiClient, namespace: str, fleet: dict[str, TargetCluster]
) -> None:
    target = fleet["fleet-a"]
    assert f"server: https://{pki.NODE_IP}:" in target.kubeconfig_text
    core = client.CoreV1Api(api_client)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="target"),
            string_data={"kubeconfig": target.kubeconfig_text},
        ),
    )
    name = f"made-by-pod-{uuid.uuid4().hex[:6]}"
    script = (
        f"kubectl --kubeconfig /k/kubeconfig create configmap {name} -n default "
        "--from-literal=by=pod && "
        "kloop-agent report checker --verdict pass --reason created"
    )
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="acts-on-target"),
        spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[
                client.V1Container(
                    name="main",
                    image=kit.kit_image(),
                    image_pull_policy="IfNotPresent",
                    command=["sh", "-c", script],
                    volume_mounts=[client.V1VolumeMount(name="k", mount_path="/k")],
                )
            ],
            volumes=[
                client.V1Volume(name="k", secret=client.V1SecretVolumeSource(secret_name="target"))
            ],
        ),
    )
    done = run_pod(core, namespace, pod, timeout=120)
    log = core.read_namespaced_pod_log("acts-on-target", namespace)
    assert done.status.phase == "Succeeded", log
    result = json.loads(done.status.container_statuses[0].state.terminated.message)
    assert result["verdict"] == "pass"  # kloop-agent ran in the kit image
    target_api = target_client(target)
    try:
        assert _configmap_exists(target_api, name)
        assert not _configmap_exists(api_client, name)
        for other in ("fleet-b", "fleet-c"):
            assert not _configmap_exists(target_client(fleet[other]), name)
    finally:
        client.CoreV1Api(target_api).delete_namespaced_config_map(name, "default")


def test_token_request_in_an_extra_cluster_gives_a_token_only_that_cluster_accepts(
    api_client: client.ApiClient, fleet: dict[str, TargetCluster]
) -> None:
    target = fleet["fleet-b"]
    ensure_service_account(target, "kloop-agents", "kloop-agent")
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    minted = client.CoreV1Api(target_client(target)).create_namespaced_service_account_token(
        "kloop-agent", "kloop-agents", request
    )
    token = minted.status.token
    assert token
    assert target.server.startswith(f"https://{pki.NODE_IP}:")
    assert _who_am_i(_token_client(target.server, token)) == (
        "system:serviceaccount:kloop-agents:kloop-agent"
    )
    for other in (fleet["fleet-c"].server, api_client.configuration.host):
        with pytest.raises(ApiException) as refused:
            _who_am_i(_token_client(other, token))
        assert refused.value.status == 401, other


def test_add_cluster_cli_writes_the_cluster_secret_manifest(
    fleet: dict[str, TargetCluster],
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "e2e.cluster",
            "add-cluster",
            "fleet-c",
            "--allowed-namespaces",
            "team-*,ops",
            "--agent-service-account",
            "kloop-agents/kloop-agent",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(
        line.split(": ", 1) for line in proc.stdout.splitlines() if line.startswith(("kube", "sec"))
    )
    manifest = yaml.safe_load(Path(lines["secret manifest"]).read_text())
    assert manifest["kind"] == "Secret"
    assert manifest["metadata"]["name"] == "fleet-c"
    assert manifest["metadata"]["namespace"] == "kloop-system"
    assert manifest["metadata"]["labels"] == {"kloop.dev/cluster": "true"}
    assert manifest["metadata"]["annotations"] == {
        "kloop.dev/allowed-namespaces": "team-*,ops",
        "kloop.dev/agent-service-account": "kloop-agents/kloop-agent",
    }
    secret_kubeconfig = TargetCluster(Path(lines["kubeconfig"]), manifest).kubeconfig_text
    assert secret_kubeconfig == Path(lines["kubeconfig"]).read_text()
    assert f"server: https://{pki.NODE_IP}:" in secret_kubeconfig
