"""Measure drift in a target cluster: server-side apply dry runs compared with the live objects.

For each desired object: discover its resource (group/version/kind -> plural, namespaced), read
the live object (404: missing), then PATCH it with ``application/apply-patch+yaml``,
``dryRun=All``, field manager ``kloop-drift`` and no force. The apiserver answers with the object
as it would be after the apply (defaults, admission and other managers' fields included), or 409
when another manager owns a field the manifest sets with another value. The comparison itself is
pure: ``kloop.core.drift``. Nothing is ever persisted in the target.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes.client.rest import ApiException

from kloop.adapters import rest
from kloop.adapters.kube import Json, Kube, api_message, is_status
from kloop.api.loop import Drift
from kloop.core import drift as core
from kloop.core.model import DriftOutcome

TargetClient = Callable[[str], Awaitable[Kube]]
"""A cluster name -> an API client for it (raises when the cluster is unknown or unusable)."""

DEFAULT_NAMESPACE = "default"
"""Where a namespaced desired object without ``metadata.namespace`` is looked for (as kubectl)."""
CONCURRENCY = 8
"""Objects measured at once in one target."""
REQUEST_TIMEOUT = (5.0, 30.0)
"""Connect and read timeouts of each request to the target's apiserver."""


class DriftError(Exception):
    """Drift could not be measured: an unknown kind, a forbidden read, a refused manifest."""


def _rest(
    api_client: Any,
    method: str,
    path: str,
    query: list[tuple[str, str]] | None = None,
    body: Any = None,
    content_type: str | None = None,
    _preload_content: bool = False,
) -> Any:
    """A raw API request with the client's auth (``rest.request``, drift's timeouts)."""
    return rest.request(
        api_client, method, path, query, body, content_type, _request_timeout=REQUEST_TIMEOUT
    )


class _Resources:
    """Discovery of one target, cached for one measurement: kind -> (plural, namespaced)."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.lists: dict[str, dict[str, tuple[str, bool]]] = {}
        self.lock = asyncio.Lock()

    async def find(self, api_version: str, kind: str) -> tuple[str, bool]:
        async with self.lock:  # one discovery request per API group version, not one per object
            return await self._find(api_version, kind)

    async def _find(self, api_version: str, kind: str) -> tuple[str, bool]:
        if api_version not in self.lists:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                found = await self.kube.call(_rest, self.kube.api_client, "GET", base)
            except ApiException as err:
                if is_status(err, 404):
                    raise DriftError(f"the cluster serves no API {api_version}") from err
                raise
            self.lists[api_version] = {
                r["kind"]: (r["name"], bool(r.get("namespaced")))
                for r in found.get("resources") or []
                if "/" not in r["name"]
            }
        resources = self.lists[api_version]
        if kind not in resources:
            raise DriftError(f"the cluster serves no kind {kind} in {api_version}")
        return resources[kind]


def _path(api_version: str, plural: str, namespace: str | None, name: str) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{scope}/{plural}/{name}"


def _status_body(err: ApiException) -> Any:
    try:
        return json.loads(err.body) if err.body else None
    except (ValueError, TypeError):
        return None


async def _measure_one(
    kube: Kube, resources: _Resources, desired: Json, confine_to: str | None
) -> core.ObjectDrift:
    """Dry-run apply one desired object and compare the result with the live one."""
    plural, namespaced = await resources.find(desired["apiVersion"], desired["kind"])
    meta = dict(desired["metadata"])
    if confine_to is not None:
        _check_confined(desired, namespaced, confine_to)
    namespace = (meta.get("namespace") or confine_to or DEFAULT_NAMESPACE) if namespaced else None
    if namespace:
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    body = {**desired, "metadata": meta}
    ref = core.object_ref(body)
    path = _path(desired["apiVersion"], plural, namespace, meta["name"])
    try:
        live = await kube.call(_rest, kube.api_client, "GET", path)
    except ApiException as err:
        if is_status(err, 404):
            return core.ObjectDrift(ref, missing=True)
        raise DriftError(f"{ref}: cannot read it ({err.status}): {api_message(err)}") from err
    query = [("dryRun", "All"), ("fieldManager", core.FIELD_MANAGER), ("fieldValidation", "Strict")]
    try:
        would_be = await kube.call(
            _rest, kube.api_client, "PATCH", path, query, body, "application/apply-patch+yaml"
        )
    except ApiException as err:
        conflicts = core.parse_conflicts(_status_body(err)) if is_status(err, 409) else []
        if conflicts:
            fields = core.conflict_fields(body, live, conflicts)
            return core.ObjectDrift(ref, fields=core.hide_secrets(body["kind"], fields))
        raise DriftError(
            f"{ref}: the dry-run apply was refused ({err.status}): {api_message(err)}"
        ) from err
    fields = core.drifted_fields(body, would_be, live)
    return core.ObjectDrift(ref, fields=core.hide_secrets(body["kind"], fields))


def _check_confined(desired: Json, namespaced: bool, namespace: str) -> None:
    """In the operator's own cluster a run may only look into its own namespace.

    The operator's identity may read far more than the run's owner: without this a Loop could
    learn whether objects exist, and their values, in any namespace through drift details.
    """
    ref = core.object_ref(desired)
    if not namespaced:
        raise DriftError(f"{ref}: cluster-scoped objects are not measured in the local cluster")
    theirs = desired["metadata"].get("namespace")
    if theirs and theirs != namespace:
        raise DriftError(
            f"{ref}: in the local cluster drift is measured only in the run's namespace "
            f"{namespace!r}"
        )


async def measure(target: Kube, desired: list[Json], confine_to: str | None = None) -> DriftOutcome:
    """How many of the desired objects drifted in the target, and how (never raises).

    Anything that prevents an honest answer (an unknown kind, a forbidden read, a manifest the
    apiserver refuses, an unreachable apiserver) is an error outcome counting no objects: the
    drift grader then errs instead of passing. ``confine_to``: the only namespace objects may be
    in (the run's, for the local cluster); it is also the default namespace then.
    """
    try:
        objects = core.check_desired(desired)
    except core.ManifestError as err:
        return core.failed(str(err))
    resources = _Resources(target)
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(obj: Json) -> core.ObjectDrift:
        async with limit:
            return await _measure_one(target, resources, obj, confine_to)

    tasks = [asyncio.create_task(one(o)) for o in objects]
    try:
        results = await asyncio.gather(*tasks)
    except DriftError as err:
        return core.failed(str(err))
    except ApiException as err:
        return core.failed(f"the target's apiserver answered {err.status}: {api_message(err)}")
    except Exception as err:  # noqa: BLE001 - unreachable, TLS, timeouts: an error, not a pass
        return core.failed(f"cannot reach the target's apiserver: {type(err).__name__}: {err}")
    finally:
        for task in tasks:  # the first error decides: stop measuring the rest
            task.cancel()
    return core.summarize(list(results))


async def load_desired(kube: Kube, namespace: str, drift: Drift) -> list[Json]:
    """The stage's desired objects: inline, or from a ConfigMap in the run's namespace.

    Read with the operator's own client (the ConfigMap lives next to the run, not in the
    target). Raises ``ManifestError`` when it is missing or does not hold usable manifests.
    """
    if drift.resources is not None:
        return core.check_desired(list(drift.resources))
    name = drift.manifests_config_map
    assert name is not None
    try:
        cm = await kube.call(kube.core.read_namespaced_config_map, name, namespace)
    except ApiException as err:
        if is_status(err, 404, 403):
            raise core.ManifestError(
                f"drift.manifestsConfigMap {name!r}: cannot read it ({err.status}): "
                f"{api_message(err)}"
            ) from err
        raise
    data = cm.get("data") or {}
    total = sum(len(v) for v in data.values())
    if total > core.MAX_MANIFEST_BYTES:
        raise core.ManifestError(f"ConfigMap {name!r} holds {total} bytes of manifests")
    try:
        return core.check_desired(core.parse_manifests(data))
    except core.ManifestError as err:
        raise core.ManifestError(f"ConfigMap {name!r}: {err}") from err


async def measure_stage(
    local: Kube,
    namespace: str,
    drift: Drift,
    target: Kube | Callable[[], Awaitable[Kube]],
    confined: bool = False,
) -> DriftOutcome:
    """Load a stage's desired objects and measure them in one target (never raises).

    ``confined``: the target is the operator's own cluster, where only the run's namespace is
    looked into.
    """
    try:
        desired = await load_desired(local, namespace, drift)
    except core.ManifestError as err:
        return core.failed(str(err))
    except Exception as err:  # noqa: BLE001
        return core.failed(f"cannot read the desired manifests: {api_message(err)}")
    try:
        client = target if isinstance(target, Kube) else await target()
    except Exception as err:  # noqa: BLE001 - an unusable cluster is an error, never a pass
        return core.failed(f"no client for the target: {err}")
    return await measure(client, desired, namespace if confined else None)
