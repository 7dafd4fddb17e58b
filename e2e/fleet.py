"""The local fleet for tests: extra clusters that agent pods can reach, and their Secrets.

Each extra cluster is an apiserver without a controller-manager, so nothing there creates a
namespace's ``default`` ServiceAccount, deletes a namespace's content or garbage-collects
owned objects: :func:`ensure_service_account` creates what an agent needs explicitly.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from e2e.cluster import extra

FLEET = ("fleet-a", "fleet-b", "fleet-c")


class TargetCluster(NamedTuple):
    """An extra cluster: its admin kubeconfig and the Secret that registers it with kloop."""

    kubeconfig: Path
    secret: dict[str, Any]

    @property
    def name(self) -> str:
        """The cluster's name (the Secret's name)."""
        return str(self.secret["metadata"]["name"])

    @property
    def kubeconfig_text(self) -> str:
        """The kubeconfig the Secret holds (server on the bridge address)."""
        return base64.b64decode(self.secret["data"]["kubeconfig"]).decode()

    @property
    def server(self) -> str:
        """The apiserver URL in that kubeconfig."""
        doc = yaml.safe_load(self.kubeconfig_text)
        return str(doc["clusters"][0]["cluster"]["server"])


def add_target_cluster(
    name: str,
    allowed_namespaces: str | None = None,
    agent_service_account: str | None = None,
) -> TargetCluster:
    """Start (or reuse) the extra cluster ``name``; return its kubeconfig and Secret manifest."""
    added = extra.add_cluster(name, allowed_namespaces, agent_service_account)
    secret = extra.cluster_secret(
        name, added.kubeconfig.read_text(), allowed_namespaces, agent_service_account
    )
    return TargetCluster(added.kubeconfig, secret)


def target_client(target: TargetCluster) -> client.ApiClient:
    """A Python Kubernetes client for the target cluster."""
    return config.new_client_from_config(config_file=str(target.kubeconfig))


def ensure_service_account(target: TargetCluster, namespace: str, name: str) -> None:
    """Create the namespace and ServiceAccount in the target (no controller-manager does)."""
    core = client.CoreV1Api(target_client(target))
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    except ApiException as err:
        if err.status != 409:
            raise
    account = client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
    try:
        core.create_namespaced_service_account(namespace, account)
    except ApiException as err:
        if err.status != 409:
            raise


def grant_agent(target: TargetCluster, agents: str, agent: str, work: str) -> None:
    """Agent ServiceAccount ``agents/agent`` may manage ConfigMaps in ``work``, nothing else."""
    ensure_service_account(target, agents, agent)
    api = target_client(target)
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    role = {
        "metadata": {"name": agent},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "verbs": ["get", "list", "create", "update", "patch"],
            }
        ],
    }
    binding = {
        "metadata": {"name": agent},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": agent},
        "subjects": [{"kind": "ServiceAccount", "name": agent, "namespace": agents}],
    }
    for create, args in (
        (core.create_namespace, ({"metadata": {"name": work}},)),
        (rbac.create_namespaced_role, (work, role)),
        (rbac.create_namespaced_role_binding, (work, binding)),
    ):
        try:
            create(*args)
        except ApiException as err:
            if err.status != 409:
                raise


def registered(target: TargetCluster, namespace: str, **annotations: str) -> dict[str, Any]:
    """The target's cluster Secret for an operator whose namespace is ``namespace``."""
    meta = target.secret["metadata"]
    return {
        **target.secret,
        "metadata": {
            **meta,
            "namespace": namespace,
            "annotations": {**(meta.get("annotations") or {}), **annotations},
        },
    }
