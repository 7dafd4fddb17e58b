"""Target clusters: cluster Secrets -> per-run cluster states, API clients, minted tokens.

A cluster is a Secret labelled ``kloop.dev/cluster: "true"`` in the operator's namespace with a
``kubeconfig`` key (docs/fleet.md). For each run the operator reports whether the run's
namespace may use it (``kloop.dev/allowed-namespaces``) and whether it can be used now (a
readable, self-contained kubeconfig, a ``kloop.dev/agent-service-account``, an apiserver that
answers ``GET /version``). API clients are cached per Secret uid and resourceVersion, and each
probe's answer for ``ttl`` seconds, so a hundred runs make one probe per cluster per ttl.
The Secret's credentials stay in this module's clients: messages never quote them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.config import new_client_from_config_dict
from kubernetes.config.config_exception import ConfigException

from kloop.adapters.kube import Kube, api_message, is_status
from kloop.adapters.kubeconfig import (
    Endpoint,
    KubeconfigError,
    build_target_kubeconfig,
    namespace_allowed,
    parse_kubeconfig,
    parse_service_account,
)
from kloop.adapters.rest import CoreV1
from kloop.core.model import LOCAL_CLUSTER, ClusterState, ObservedCluster

log = logging.getLogger("kloop.clusters")

CLUSTER_LABEL = "kloop.dev/cluster"
KUBECONFIG_KEY = "kubeconfig"
ANNOTATION_ALLOWED_NAMESPACES = "kloop.dev/allowed-namespaces"
ANNOTATION_AGENT_SERVICE_ACCOUNT = "kloop.dev/agent-service-account"
OPERATOR_NAMESPACE = os.environ.get("KLOOP_OPERATOR_NAMESPACE", "kloop-system")

PROBE_TTL = 15.0
PROBE_TIMEOUT = 3.0
# TokenRequest refuses less than 10 minutes; the margin covers scheduling and image pulls,
# which activeDeadlineSeconds does not count.
MIN_TOKEN_SECONDS = 600
TOKEN_MARGIN_SECONDS = 120

Json = dict[str, Any]


class MintRefused(Exception):
    """The target refused the token for good (no such ServiceAccount, no RBAC): fail the pod."""


@dataclass(frozen=True)
class MintedKubeconfig:
    """A kubeconfig holding a freshly minted token, and when that token expires."""

    text: str
    expires_at: str


@dataclass
class _Cluster:
    """What one version of a cluster Secret gives the operator, and the last probe's answer."""

    version: tuple[str, str]
    api: client.ApiClient | None = None
    endpoint: Endpoint | None = None
    service_account: tuple[str, str] | None = None
    problem: str | None = None
    probed_at: float | None = None
    probe_error: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def close(self) -> None:
        if self.api is not None:
            self.api.close()


def _decode(secret: Json) -> str:
    data = (secret.get("data") or {}).get(KUBECONFIG_KEY)
    if not data:
        raise KubeconfigError(f"the Secret has no {KUBECONFIG_KEY!r} key")
    try:
        return base64.b64decode(data).decode()
    except (ValueError, UnicodeDecodeError):
        raise KubeconfigError(f"the Secret's {KUBECONFIG_KEY!r} is not UTF-8 text") from None


def _load(secret: Json, timeout: float) -> _Cluster:
    """Parse a cluster Secret into a client (never raises: problems become ``problem``)."""
    meta = secret["metadata"]
    entry = _Cluster((meta.get("uid") or "", meta.get("resourceVersion") or ""))
    annotations = meta.get("annotations") or {}
    try:
        doc, entry.endpoint = parse_kubeconfig(_decode(secret))
        config = client.Configuration()
        new_client_from_config_dict(doc, persist_config=False, client_configuration=config)
    except KubeconfigError as err:
        entry.problem = f"unreadable kubeconfig in Secret {meta['name']!r}: {err}"
        return entry
    except (ConfigException, ValueError, TypeError) as err:
        # the client's own checks; its messages name keys, not values
        entry.problem = (
            f"unreadable kubeconfig in Secret {meta['name']!r}: {type(err).__name__}: "
            f"{str(err)[:200]}"
        )
        return entry
    config.retries = 0  # one try: a probe must answer within its timeout
    entry.api = client.ApiClient(configuration=config)
    value = annotations.get(ANNOTATION_AGENT_SERVICE_ACCOUNT)
    if not value:
        entry.problem = (
            f"Secret {meta['name']!r} has no {ANNOTATION_AGENT_SERVICE_ACCOUNT} annotation "
            "(<namespace>/<name> of the ServiceAccount agent pods act as in that cluster); it "
            "is required for clusters that run agents"
        )
        return entry
    try:
        entry.service_account = parse_service_account(value)
    except KubeconfigError as err:
        entry.problem = f"Secret {meta['name']!r}: {ANNOTATION_AGENT_SERVICE_ACCOUNT}: {err}"
    return entry


def _describe(err: BaseException) -> str:
    if isinstance(err, ApiException):
        return f"HTTP {err.status}: {api_message(err)}"[:300]
    reason = getattr(err, "reason", None)  # urllib3's MaxRetryError wraps the real cause
    return f"{type(err).__name__}: {reason or err}"[:300]


class ClusterRegistry:
    """The operator's view of its target clusters, shared by every run."""

    def __init__(
        self,
        namespace: str = OPERATOR_NAMESPACE,
        ttl: float = PROBE_TTL,
        timeout: float = PROBE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.ttl = ttl
        self.timeout = timeout
        self.clock = clock
        self._clusters: dict[str, _Cluster] = {}
        self._agents: dict[str, tuple[Kube, float]] = {}

    def _entry(self, secret: Json) -> _Cluster:
        meta = secret["metadata"]
        version = (meta.get("uid") or "", meta.get("resourceVersion") or "")
        entry = self._clusters.get(meta["name"])
        if entry is None or entry.version != version:
            if entry is not None:
                entry.close()
            entry = self._clusters[meta["name"]] = _load(secret, self.timeout)
        return entry

    async def _probe(self, entry: _Cluster) -> str | None:
        """The apiserver's answer to GET /version (None = reachable), cached for ``ttl``."""
        async with entry.lock:  # concurrent runs wait for one probe instead of each sending one
            now = self.clock()
            if entry.probed_at is not None and now - entry.probed_at < self.ttl:
                return entry.probe_error
            assert entry.api is not None
            version = client.VersionApi(entry.api)
            try:
                await asyncio.to_thread(partial(version.get_code, _request_timeout=self.timeout))
                entry.probe_error = None
            except Exception as err:  # noqa: BLE001 - any failure means unreachable
                entry.probe_error = _describe(err)
            entry.probed_at = self.clock()
            return entry.probe_error

    async def _state(self, secret: Json, run_namespace: str) -> ObservedCluster:
        meta = secret["metadata"]
        name, labels = meta["name"], meta.get("labels") or {}
        allowed = (meta.get("annotations") or {}).get(ANNOTATION_ALLOWED_NAMESPACES)
        if not namespace_allowed(allowed, run_namespace):
            return ObservedCluster(
                name,
                labels,
                ClusterState.NOT_ALLOWED,
                f"namespace {run_namespace!r} is not in the cluster Secret's "
                f"{ANNOTATION_ALLOWED_NAMESPACES} ({allowed or 'not set'!s})",
            )
        entry = self._entry(secret)
        if entry.problem is not None:
            return ObservedCluster(name, labels, ClusterState.UNAVAILABLE, entry.problem)
        agents = entry.service_account[0] if entry.service_account else None
        error = await self._probe(entry)
        if error is not None:
            assert entry.endpoint is not None
            return ObservedCluster(
                name,
                labels,
                ClusterState.UNAVAILABLE,
                f"apiserver {entry.endpoint.server} unreachable: {error}",
                agents,
            )
        return ObservedCluster(name, labels, ClusterState.READY, agent_namespace=agents)

    async def observe(self, kube: Kube, run_namespace: str) -> dict[str, ObservedCluster]:
        """Every cluster with its state for a run in ``run_namespace``; ``local`` is READY.

        A Secret named ``local`` is ignored (the name is reserved for the operator's own
        cluster). Without RBAC to list Secrets there, only ``local`` exists.
        """
        try:
            secrets = await kube.call(
                kube.core.list_namespaced_secret,
                self.namespace,
                label_selector=f"{CLUSTER_LABEL}=true",
            )
        except Exception as err:
            if not is_status(err, 403, 404):
                raise
            secrets = {"items": []}
        items = [s for s in secrets["items"] if s["metadata"]["name"] != LOCAL_CLUSTER]
        for gone in set(self._clusters) - {s["metadata"]["name"] for s in items}:
            self._clusters.pop(gone).close()
        states = await asyncio.gather(*(self._state(s, run_namespace) for s in items))
        clusters = {c.name: c for c in states}
        clusters[LOCAL_CLUSTER] = ObservedCluster(LOCAL_CLUSTER)
        return clusters

    async def client(self, cluster: str) -> Kube:
        """The operator's own client for ``cluster`` (drift measurement); never handed out."""
        entry = self._clusters.get(cluster)
        if entry is None or entry.api is None:
            problem = entry.problem if entry is not None else "no cluster Secret by that name"
            raise LookupError(f"cluster {cluster!r} has no usable client: {problem}")
        return Kube(entry.api)

    def agent_account(self, cluster: str) -> tuple[str, str]:
        """The agent ServiceAccount (namespace, name) the cluster Secret names."""
        entry = self._clusters.get(cluster)
        if entry is None or entry.service_account is None:
            raise MintRefused(f"cluster {cluster!r} names no agent ServiceAccount")
        return entry.service_account

    async def mint(self, cluster: str, seconds: int) -> MintedKubeconfig:
        """A kubeconfig for ``cluster`` with a new token of its agent ServiceAccount.

        Uses the client of the Secret version last observed. Raises MintRefused when the
        cluster cannot mint for good (gone, misconfigured, 4xx), anything else when it may work
        on a later try.
        """
        entry = self._clusters.get(cluster)
        if entry is None or entry.problem is not None:
            why = entry.problem if entry is not None else "no cluster Secret"
            raise MintRefused(f"cluster {cluster!r} cannot mint tokens: {why}")
        assert entry.api is not None and entry.endpoint is not None
        assert entry.service_account is not None
        namespace, name = entry.service_account
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": max(MIN_TOKEN_SECONDS, seconds)},
        }
        core = CoreV1(entry.api)
        try:
            response = await asyncio.to_thread(
                partial(
                    core.create_namespaced_service_account_token,
                    name,
                    namespace,
                    body,
                    _preload_content=False,
                    _request_timeout=self.timeout * 3,
                )
            )
        except ApiException as err:
            if err.status is not None and 400 <= err.status < 500 and err.status != 429:
                raise MintRefused(
                    f"cluster {cluster!r} refused a token for ServiceAccount "
                    f"{namespace}/{name}: {_describe(err)}"
                ) from None
            raise
        status = json.loads(response.data)["status"]
        text = build_target_kubeconfig(cluster, entry.endpoint, status["token"], namespace)
        return MintedKubeconfig(text, status["expirationTimestamp"])

    async def agent_client(self, cluster: str) -> Kube:
        """A client acting as the cluster's agent ServiceAccount (a short-lived minted token).

        Drift is measured with it, so what a Loop can learn of a target through drift details
        is what its own agents may read there, not what the operator's identity may. Cached
        until a minute before the token expires.
        """
        cached = self._agents.get(cluster)
        if cached is not None and cached[1] > self.clock() + 60:
            return cached[0]
        minted = await self.mint(cluster, MIN_TOKEN_SECONDS)
        api = new_client_from_config_dict(yaml.safe_load(minted.text))
        if cached is not None:
            cached[0].api_client.close()
        kube = Kube(api)
        self._agents[cluster] = (kube, self.clock() + MIN_TOKEN_SECONDS - 30)
        return kube

    def close(self) -> None:
        """Close every cached client (shutdown)."""
        for kube, _ in self._agents.values():
            kube.api_client.close()
        self._agents.clear()
        for entry in self._clusters.values():
            entry.close()
        self._clusters.clear()


def token_seconds(pod_deadline: int | None) -> int:
    """How long a token for a pod lives: its deadline plus a margin, at least TokenRequest's min."""
    return max(MIN_TOKEN_SECONDS, (pod_deadline or 0) + TOKEN_MARGIN_SECONDS)
