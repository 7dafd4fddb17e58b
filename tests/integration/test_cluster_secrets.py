"""Cluster Secrets against real apiservers: states per namespace, and minted token kubeconfigs.

The management cluster holds the cluster Secrets (in a throw-away namespace standing in for the
operator's); the harness's extra apiserver ``b`` is the target. Extra clusters run no
controller-manager, so the tests create the agent ServiceAccount there themselves.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from kloop.adapters import targets
from kloop.adapters.clusters import ClusterRegistry, MintRefused
from kloop.adapters.kube import Kube
from kloop.core.model import ClusterState, ObservedCluster

pytestmark = pytest.mark.integration

AGENTS = "kloop-agents"
Json = dict[str, Any]


def cluster_secret(
    name: str, kubeconfig: str, allowed: str | None, service_account: str | None = f"{AGENTS}/agent"
) -> Json:
    annotations = {}
    if allowed is not None:
        annotations["kloop.dev/allowed-namespaces"] = allowed
    if service_account is not None:
        annotations["kloop.dev/agent-service-account"] = service_account
    return {
        "metadata": {
            "name": name,
            "labels": {"kloop.dev/cluster": "true", "env": "test"},
            "annotations": annotations,
        },
        "stringData": {"kubeconfig": kubeconfig},
    }


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_server(kubeconfig: str, server: str) -> str:
    doc = yaml.safe_load(kubeconfig)
    doc["clusters"][0]["cluster"]["server"] = server
    return str(yaml.safe_dump(doc))


def observe(api_client: client.ApiClient, registry: ClusterRegistry, run_namespace: str) -> Any:
    return asyncio.run(registry.observe(Kube(api_client), run_namespace))


@pytest.fixture
def add_secret(api_client: client.ApiClient, namespace: str) -> Iterator[Any]:
    """Create cluster Secrets in the test namespace (the operator's namespace for the test)."""
    core = client.CoreV1Api(api_client)

    def add(body: Json) -> None:
        core.create_namespaced_secret(namespace, body)

    yield add  # the namespace takes them with it


@pytest.fixture
def agent_account(extra_cluster: Path) -> Iterator[tuple[client.ApiClient, str]]:
    """ServiceAccount kloop-agents/agent in cluster b, allowed to manage ConfigMaps there."""
    target = config.new_client_from_config(config_file=str(extra_cluster))
    core = client.CoreV1Api(target)
    rbac = client.RbacAuthorizationV1Api(target)
    sa = f"agent-{uuid.uuid4().hex[:6]}"
    try:
        core.create_namespace({"metadata": {"name": AGENTS}})
    except client.ApiException as err:
        if err.status != 409:
            raise
    core.create_namespaced_service_account(AGENTS, {"metadata": {"name": sa}})
    rbac.create_namespaced_role(
        AGENTS,
        {
            "metadata": {"name": sa},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        AGENTS,
        {
            "metadata": {"name": sa},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": AGENTS}],
        },
    )
    try:
        yield target, sa
    finally:
        core.delete_namespaced_service_account(sa, AGENTS)
        rbac.delete_namespaced_role(sa, AGENTS)
        rbac.delete_namespaced_role_binding(sa, AGENTS)


def test_cluster_is_ready_only_for_namespaces_its_allowed_namespaces_annotation_matches(
    api_client: client.ApiClient, namespace: str, extra_cluster: Path, add_secret: Any
) -> None:
    add_secret(cluster_secret("b", extra_cluster.read_text(), "team-*, ops"))
    registry = ClusterRegistry(namespace)
    ready = observe(api_client, registry, "team-a")
    assert ready["b"] == ObservedCluster(
        "b", {"kloop.dev/cluster": "true", "env": "test"}, agent_namespace=AGENTS
    )
    assert ready["local"].state is ClusterState.READY
    refused = observe(api_client, registry, "other")["b"]
    assert refused.state is ClusterState.NOT_ALLOWED
    assert "kloop.dev/allowed-namespaces" in (refused.message or "")
    assert "team-*, ops" in (refused.message or "")


def test_cluster_without_allowed_namespaces_is_allowed_nowhere(
    api_client: client.ApiClient, namespace: str, extra_cluster: Path, add_secret: Any
) -> None:
    add_secret(cluster_secret("b", extra_cluster.read_text(), None))
    found = observe(api_client, ClusterRegistry(namespace), "team-a")["b"]
    assert found.state is ClusterState.NOT_ALLOWED


def test_cluster_whose_apiserver_is_down_is_unavailable_within_the_probe_timeout(
    api_client: client.ApiClient, namespace: str, extra_cluster: Path, add_secret: Any
) -> None:
    server = f"https://127.0.0.1:{closed_port()}"
    add_secret(cluster_secret("down", with_server(extra_cluster.read_text(), server), "*"))
    registry = ClusterRegistry(namespace)
    started = time.monotonic()
    down = observe(api_client, registry, "team-a")["down"]
    assert time.monotonic() - started < registry.timeout + 1
    assert down.state is ClusterState.UNAVAILABLE
    assert f"apiserver {server} unreachable" in (down.message or ""), down.message


class CountingListener:
    """A loopback TCP server that counts connections and closes each at once (no TLS)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_probe_answers_are_cached_so_many_runs_probe_a_cluster_once_per_ttl(
    api_client: client.ApiClient, namespace: str, extra_cluster: Path, add_secret: Any
) -> None:
    listener = CountingListener()
    try:
        server = f"https://127.0.0.1:{listener.port}"
        add_secret(cluster_secret("b", with_server(extra_cluster.read_text(), server), "*"))
        now = [0.0]
        registry = ClusterRegistry(namespace, clock=lambda: now[0])

        async def many_runs() -> list[dict[str, ObservedCluster]]:
            kube = Kube(api_client)
            return await asyncio.gather(*(registry.observe(kube, f"ns-{i}") for i in range(20)))

        states = {r["b"].state for r in asyncio.run(many_runs())}
        assert states == {ClusterState.UNAVAILABLE}
        assert listener.accepted == 1, "twenty runs, one probe"
        now[0] = registry.ttl - 1
        observe(api_client, registry, "x")
        assert listener.accepted == 1, "within the TTL the answer is reused"
        now[0] = registry.ttl + 1
        observe(api_client, registry, "x")
        assert listener.accepted == 2, "after the TTL the cluster is probed again"
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("kubeconfig", "expected"),
    [
        ("not: [valid", "not valid YAML"),
        ("- a list", "not a YAML mapping"),
        (
            "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n"
            "current-context: x\n",
            "no context named 'x'",
        ),
    ],
)
def test_unreadable_kubeconfig_makes_the_cluster_unavailable_with_the_reason(
    api_client: client.ApiClient, namespace: str, add_secret: Any, kubeconfig: str, expected: str
) -> None:
    add_secret(cluster_secret("broken", kubeconfig, "*"))
    broken = observe(api_client, ClusterRegistry(namespace), "team-a")["broken"]
    assert broken.state is ClusterState.UNAVAILABLE
    assert "unreadable kubeconfig in Secret 'broken'" in (broken.message or "")
    assert expected in (broken.message or ""), broken.message


def test_kubeconfig_with_an_exec_plugin_is_refused_and_never_run(
    api_client: client.ApiClient,
    namespace: str,
    extra_cluster: Path,
    add_secret: Any,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    doc = yaml.safe_load(extra_cluster.read_text())
    doc["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "sh",
            "args": ["-c", f"touch {marker}"],
        }
    }
    add_secret(cluster_secret("plugin", yaml.safe_dump(doc), "*"))
    found = observe(api_client, ClusterRegistry(namespace), "team-a")["plugin"]
    assert found.state is ClusterState.UNAVAILABLE
    assert "exec" in (found.message or "")
    assert not marker.exists()


def test_cluster_without_agent_service_account_annotation_is_unavailable_and_says_so(
    api_client: client.ApiClient, namespace: str, extra_cluster: Path, add_secret: Any
) -> None:
    add_secret(cluster_secret("b", extra_cluster.read_text(), "*", service_account=None))
    found = observe(api_client, ClusterRegistry(namespace), "team-a")["b"]
    assert found.state is ClusterState.UNAVAILABLE
    assert "kloop.dev/agent-service-account" in (found.message or "")
    assert "required" in (found.message or "")


def test_secret_named_local_never_replaces_the_operators_own_cluster(
    api_client: client.ApiClient, namespace: str, extra_cluster: Path, add_secret: Any
) -> None:
    add_secret(cluster_secret("local", extra_cluster.read_text(), "*"))
    clusters = observe(api_client, ClusterRegistry(namespace), "team-a")
    assert clusters == {"local": ObservedCluster("local")}


def _admin_credentials(kubeconfig: str) -> list[str]:
    user = yaml.safe_load(kubeconfig)["users"][0]["user"]
    values = [v for v in user.values() if isinstance(v, str)]
    assert values, "the admin kubeconfig has inline credentials"
    return values + [base64.b64decode(v).decode() for v in values]


def test_minted_kubeconfig_acts_as_the_agent_service_account_and_holds_no_admin_credential(
    api_client: client.ApiClient,
    namespace: str,
    extra_cluster: Path,
    add_secret: Any,
    agent_account: tuple[client.ApiClient, str],
    tmp_path: Path,
) -> None:
    target, sa = agent_account
    admin = extra_cluster.read_text()
    add_secret(cluster_secret("b", admin, namespace, service_account=f"{AGENTS}/{sa}"))
    registry = ClusterRegistry(namespace)
    assert observe(api_client, registry, namespace)["b"].state is ClusterState.READY
    minted = asyncio.run(registry.mint("b", 60))

    # written as the pod's Secret in the run's namespace, as apply.py does
    run = {
        "apiVersion": "kloop.dev/v1alpha1",
        "kind": "LoopRun",
        "metadata": {"name": "r1", "namespace": namespace, "uid": str(uuid.uuid4())},
    }
    # a real owner, or the garbage collector deletes the Secret at once
    cm = client.CoreV1Api(api_client).create_namespaced_config_map(
        namespace, {"metadata": {"name": "owner"}}
    )
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": cm.metadata.uid}
    body = targets.render_target_secret("r1-s0-b-i1-maker", run, owner, "b", minted.text)
    uid = asyncio.run(targets.write_target_secret(Kube(api_client), body))
    stored = client.CoreV1Api(api_client).read_namespaced_secret(
        "r1-s0-b-i1-maker-target", namespace
    )
    assert stored.metadata.uid == uid
    text = base64.b64decode(stored.data["kubeconfig"]).decode()
    assert set(stored.data) == {"kubeconfig"}
    for credential in _admin_credentials(admin):
        assert credential not in text

    # the token is short-lived: at least TokenRequest's minimum, well under a day
    expires = datetime.fromisoformat(minted.expires_at.replace("Z", "+00:00"))
    assert timedelta(minutes=9) < expires - datetime.now(UTC) < timedelta(minutes=12)

    # and it works in cluster b, as the agent ServiceAccount, with that account's rights only
    path = tmp_path / "agent.kubeconfig"
    path.write_text(text)
    agent = config.new_client_from_config(config_file=str(path))
    review = client.AuthenticationV1Api(agent).create_self_subject_review({"metadata": {}})
    assert review.status.user_info.username == f"system:serviceaccount:{AGENTS}:{sa}"
    created = client.CoreV1Api(agent).create_namespaced_config_map(
        AGENTS, {"metadata": {"name": f"made-by-{sa}"}, "data": {"k": "v"}}
    )
    client.CoreV1Api(target).delete_namespaced_config_map(created.metadata.name, AGENTS)
    with pytest.raises(client.ApiException) as denied:
        client.CoreV1Api(agent).list_secret_for_all_namespaces()
    assert denied.value.status == 403

    # deleting it by the uid the pod records removes exactly that Secret
    asyncio.run(
        targets.delete_target_secret(Kube(api_client), namespace, body["metadata"]["name"], uid)
    )
    with pytest.raises(client.ApiException) as gone:
        client.CoreV1Api(api_client).read_namespaced_secret(body["metadata"]["name"], namespace)
    assert gone.value.status == 404


def test_target_secret_of_another_uid_is_never_deleted_for_a_pod(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "p-target"}, "stringData": {"a": "b"}}
    )
    asyncio.run(
        targets.delete_target_secret(Kube(api_client), namespace, "p-target", str(uuid.uuid4()))
    )
    assert core.read_namespaced_secret("p-target", namespace).data == {"a": "Yg=="}


def test_minting_for_a_missing_service_account_is_refused_for_good(
    api_client: client.ApiClient, namespace: str, extra_cluster: Path, add_secret: Any
) -> None:
    add_secret(cluster_secret("b", extra_cluster.read_text(), "*", f"{AGENTS}/nobody"))
    registry = ClusterRegistry(namespace)
    observe(api_client, registry, "team-a")
    with pytest.raises(MintRefused, match="nobody"):
        asyncio.run(registry.mint("b", 60))
