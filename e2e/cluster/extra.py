"""Extra clusters: more kube-apiservers on the shared etcd, each under its own prefix.

An extra cluster is an apiserver with no node, no controller-manager and no scheduler. It binds
on the pods' bridge address (``pki.NODE_IP``, the ``cni0`` gateway on this host), so agent pods of
the management cluster can reach it, with a serving certificate from the harness CA that names
that address, 127.0.0.1 and localhost. Each has its own ServiceAccount issuer and signing key, so a
token minted by one cluster (TokenRequest) is refused by every other.

``add_cluster`` also writes the cluster Secret manifest the kloop operator reads (label
``kloop.dev/cluster: "true"``, key ``kubeconfig``, optional annotations).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import build, local, pki, processes
from e2e.cluster.paths import PKI

FIRST_PORT = 6444
LAST_PORT = 6499
SECRET_NAMESPACE = "kloop-system"
CLUSTER_LABEL = "kloop.dev/cluster"
ALLOWED_NAMESPACES = "kloop.dev/allowed-namespaces"
AGENT_SERVICE_ACCOUNT = "kloop.dev/agent-service-account"
RESERVED_NAMES = {"local"}


@dataclass(frozen=True)
class ExtraCluster:
    """Where an extra cluster listens and the files the harness wrote for it."""

    name: str
    port: int
    kubeconfig: Path
    secret_manifest: Path

    @property
    def server(self) -> str:
        """The URL pods and this host both use: the bridge address, never loopback."""
        return f"https://{pki.NODE_IP}:{self.port}"


def _process_name(name: str) -> str:
    return f"apiserver-{name}"


def _cluster_dir(name: str) -> Path:
    return local.CLUSTERS_DIR / name


def _check_name(name: str) -> None:
    if name in RESERVED_NAMES:
        raise local.ClusterError(f"{name!r} is reserved for the operator's own cluster")
    valid = name.replace("-", "").isalnum() and name == name.lower() and len(name) <= 40
    if not valid or name.startswith("-") or name.endswith("-"):
        raise local.ClusterError(f"{name!r} is not a DNS label (lower-case, digits, '-', <= 40)")


def _port_for(name: str) -> int:
    """The port recorded for ``name``, or the next free one from FIRST_PORT (then recorded)."""
    local.CLUSTERS_DIR.mkdir(parents=True, exist_ok=True)
    port_file = local.CLUSTERS_DIR / f"extra-{name}.port"
    if port_file.exists():
        return int(port_file.read_text())
    used = {int(p.read_text()) for p in local.CLUSTERS_DIR.glob("extra-*.port")}
    free = [p for p in range(FIRST_PORT, LAST_PORT + 1) if p not in used]
    if not free:
        raise local.ClusterError(f"no free port for another cluster in {FIRST_PORT}-{LAST_PORT}")
    port_file.write_text(str(free[0]))
    return free[0]


def _identity(name: str) -> local.ApiserverIdentity:
    """The cluster's own serving certificate and token keys, signed by the harness CA."""
    directory = _cluster_dir(name)
    serving = pki.Leaf(
        "serving",
        f"/CN=kloop-{name}-apiserver",
        "serverAuth",
        f"DNS:localhost,IP:127.0.0.1,IP:{pki.NODE_IP}",
    )
    pki.issue_leaf(PKI, serving, directory)
    pki.ensure_service_account_keys(directory)
    return local.ApiserverIdentity(
        tls_cert=directory / "serving.crt",
        tls_key=directory / "serving.key",
        sa_public_key=directory / "sa.pub",
        sa_signing_key=directory / "sa.key",
        issuer=f"https://kloop-{name}.cluster.local",
    )


def _running_argv(name: str) -> list[str]:
    pid = processes.pid_of(_process_name(name))
    if pid is None or not processes.running(_process_name(name)):
        return []
    return processes.cmdline(pid)


def cluster_secret(
    name: str,
    kubeconfig: str,
    allowed_namespaces: str | None = None,
    agent_service_account: str | None = None,
) -> dict[str, Any]:
    """The Secret that registers a cluster with the kloop operator (in ``kloop-system``)."""
    annotations = {}
    if allowed_namespaces is not None:
        annotations[ALLOWED_NAMESPACES] = allowed_namespaces
    if agent_service_account is not None:
        annotations[AGENT_SERVICE_ACCOUNT] = agent_service_account
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": SECRET_NAMESPACE,
        "labels": {CLUSTER_LABEL: "true"},
    }
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": {"kubeconfig": base64.b64encode(kubeconfig.encode()).decode()},
    }


def add_cluster(
    name: str,
    allowed_namespaces: str | None = None,
    agent_service_account: str | None = None,
) -> ExtraCluster:
    """Start (or find running) the extra cluster ``name``; write its kubeconfig and Secret.

    An apiserver of that name started with other flags (an older harness bound it on loopback)
    is restarted with the current ones: its objects live in etcd and survive.
    """
    _check_name(name)
    if not processes.running("etcd"):
        raise local.ClusterError("the local cluster is not up: run `python -m e2e.cluster up`")
    port = _port_for(name)
    server = f"https://{pki.NODE_IP}:{port}"
    kubeconfig = pki.write_kubeconfig(
        local.CLUSTERS_DIR / f"{_process_name(name)}.kubeconfig", PKI, "admin", server, name
    )
    argv = local.apiserver_argv(
        build.build_kubernetes(), port, f"/cluster-{name}", pki.NODE_IP, _identity(name)
    )
    running = _running_argv(name)
    if running and running != argv:
        local.say(f"restarting extra apiserver {name!r}: it runs with other flags")
        processes.stop(_process_name(name))
    local.say(f"extra cluster {name!r}: apiserver on {server} (etcd prefix /cluster-{name})")
    local.start_apiserver(_process_name(name), argv, kubeconfig)
    secret = cluster_secret(name, kubeconfig.read_text(), allowed_namespaces, agent_service_account)
    manifest = local.CLUSTERS_DIR / f"{name}.secret.yaml"
    manifest.write_text(yaml.safe_dump(secret, sort_keys=False))
    manifest.chmod(0o600)
    return ExtraCluster(name, port, kubeconfig, manifest)


def server_of(name: str) -> str:
    """The URL of the extra cluster ``name`` (its port was recorded when it was added)."""
    port_file = local.CLUSTERS_DIR / f"extra-{name}.port"
    if not port_file.exists():
        raise local.ClusterError(f"no extra cluster {name!r}: add-cluster it first")
    return f"https://{pki.NODE_IP}:{int(port_file.read_text())}"


def is_running(name: str) -> bool:
    """Whether the extra cluster's apiserver runs."""
    return processes.running(_process_name(name))


def remove_cluster(name: str) -> None:
    """Stop the extra cluster's apiserver. Its objects stay in etcd (under its prefix)."""
    processes.stop(_process_name(name))


def names() -> list[str]:
    """Extra clusters the harness knows (a port recorded), running or not."""
    if not local.CLUSTERS_DIR.exists():
        return []
    return sorted(
        p.name[len("extra-") : -len(".port")] for p in local.CLUSTERS_DIR.glob("extra-*.port")
    )
