"""Cluster Secrets' kubeconfigs: what the operator accepts, and the token-only one pods get.

Pure functions (no I/O), so the rules are unit-tested: the kubeconfig in a cluster Secret must be
self-contained (inline data, no file paths, no exec or auth-provider plugins: the operator must
neither read its own files nor run commands on a Secret author's say-so), and what a pod gets
carries the target's address and CA and a minted token, never the Secret's own credentials.
Error messages never quote the kubeconfig: a YAML error would otherwise echo a line of it (a key
or token) into status and Events.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import yaml

Json = dict[str, Any]

# Keys that name files on the operator's disk or run programs; refused in cluster Secrets.
_FILE_KEYS = {
    "cluster": ("certificate-authority",),
    "user": ("client-certificate", "client-key", "tokenFile"),
}
_PLUGIN_KEYS = ("exec", "auth-provider")


class KubeconfigError(ValueError):
    """The kubeconfig cannot be used; the message is safe to show (it quotes no content)."""


@dataclass(frozen=True)
class Endpoint:
    """How to reach and trust a target's apiserver: everything a pod may know but the token."""

    server: str
    ca_data: str | None = None
    insecure: bool = False
    tls_server_name: str | None = None


def namespace_allowed(patterns: str | None, namespace: str) -> bool:
    """Whether ``kloop.dev/allowed-namespaces`` (a comma list of names or globs) admits it.

    No annotation (or an empty one) admits nothing: a cluster is usable only where its owner
    said so.
    """
    return any(
        fnmatch.fnmatchcase(namespace, p.strip()) for p in (patterns or "").split(",") if p.strip()
    )


def parse_service_account(value: str | None) -> tuple[str, str]:
    """``<namespace>/<name>`` from ``kloop.dev/agent-service-account``."""
    namespace, _, name = (value or "").strip().partition("/")
    if not namespace or not name or "/" in name:
        raise KubeconfigError(f"expected <namespace>/<name>, got {value!r}")
    return namespace, name


def _named(doc: Json, kind: str, name: str) -> Json:
    for entry in doc.get(kind) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            inner = entry.get(kind[:-1])
            if isinstance(inner, dict):
                return inner
    raise KubeconfigError(f"the kubeconfig has no {kind[:-1]} named {name!r}")


def parse_kubeconfig(text: str) -> tuple[Json, Endpoint]:
    """The parsed kubeconfig (for the operator's client) and its current cluster's endpoint."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise KubeconfigError(f"the kubeconfig is not valid YAML{where}") from None
    if not isinstance(doc, dict):
        raise KubeconfigError("the kubeconfig is not a YAML mapping")
    current = doc.get("current-context")
    if not current:
        contexts = doc.get("contexts") or []
        if len(contexts) != 1 or not isinstance(contexts[0], dict):
            raise KubeconfigError("the kubeconfig has no current-context")
        current = contexts[0].get("name")
        doc["current-context"] = current
    context = _named(doc, "contexts", str(current))
    cluster = _named(doc, "clusters", str(context.get("cluster")))
    user = _named(doc, "users", str(context.get("user")))
    for part, entry in (("cluster", cluster), ("user", user)):
        refused = [k for k in (*_FILE_KEYS[part], *_PLUGIN_KEYS) if entry.get(k)]
        if refused:
            raise KubeconfigError(
                f"the kubeconfig's {part} uses {', '.join(refused)}: only inline credentials "
                "(token or client-certificate-data/client-key-data) and "
                "certificate-authority-data are accepted"
            )
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise KubeconfigError("the kubeconfig's cluster needs an https:// server")
    endpoint = Endpoint(
        server=server,
        ca_data=cluster.get("certificate-authority-data") or None,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=cluster.get("tls-server-name") or None,
    )
    return doc, endpoint


def build_target_kubeconfig(cluster: str, endpoint: Endpoint, token: str, namespace: str) -> str:
    """The kubeconfig an agent pod gets: the target's address and CA, the minted token only."""
    entry: Json = {"server": endpoint.server}
    if endpoint.ca_data:
        entry["certificate-authority-data"] = endpoint.ca_data
    if endpoint.insecure:
        entry["insecure-skip-tls-verify"] = True
    if endpoint.tls_server_name:
        entry["tls-server-name"] = endpoint.tls_server_name
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": entry}],
        "users": [{"name": "kloop-agent", "user": {"token": token}}],
        "contexts": [
            {
                "name": cluster,
                "context": {"cluster": cluster, "user": "kloop-agent", "namespace": namespace},
            }
        ],
        "current-context": cluster,
    }
    return yaml.safe_dump(doc, sort_keys=False)
