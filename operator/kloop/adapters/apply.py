"""Carry out a Decision: status first (optimistic concurrency), then the actions, in order.

Order: status, Events, memory (then a one-field status patch, ``memoryRecordedThrough``), pods,
oracles, the Loop's columns. Writing status before side effects means a crash in between only
repeats idempotent actions (pods and ConfigMaps have deterministic names; memory appends are keyed
by run uid and iteration).
"""

from __future__ import annotations

import json
import logging

from kloop.adapters import events, memory, oracles
from kloop.adapters.kube import Json, Kube, is_status, owner_reference
from kloop.adapters.observe import Caches, Snapshot
from kloop.adapters.pods import render_inputs, render_pod
from kloop.api import GROUP, VERSION
from kloop.core.model import (
    AppendMemory,
    CreatePod,
    Decision,
    DeletePod,
    EvaluateOracle,
    RecordEvent,
)
from kloop.metrics import PODS_CREATED, record_transition

log = logging.getLogger("kloop.apply")


class Conflict(Exception):
    """Someone changed the LoopRun since we read it: observe again."""


async def write_status(kube: Kube, snap: Snapshot, decision: Decision) -> None:
    """Replace the status subresource, guarded by the resourceVersion we read."""
    old = snap.run.get("status") or {}
    new = decision.status.to_kube()
    if old.get("kopf") is not None:
        new["kopf"] = old["kopf"]
    if new == old:
        return
    body = {
        "apiVersion": snap.run["apiVersion"],
        "kind": snap.run["kind"],
        "metadata": {
            "name": snap.run["metadata"]["name"],
            "namespace": snap.run["metadata"]["namespace"],
            "resourceVersion": snap.run["metadata"]["resourceVersion"],
        },
        "spec": snap.run["spec"],
        "status": new,
    }
    meta = snap.run["metadata"]
    try:
        updated = await kube.call(
            kube.custom.replace_namespaced_custom_object_status,
            GROUP,
            VERSION,
            meta["namespace"],
            "loopruns",
            meta["name"],
            body,
        )
    except Exception as err:
        if is_status(err, 409):
            raise Conflict(str(err)) from err
        raise
    snap.run["metadata"]["resourceVersion"] = updated["metadata"]["resourceVersion"]


def _api_message(err: BaseException) -> str:
    """The apiserver's own words from an ApiException (its JSON body), else the error."""
    body = getattr(err, "body", None)
    try:
        return str(json.loads(body)["message"]) if body else str(err)
    except (ValueError, KeyError, TypeError):
        return str(err)


async def _create_pod(kube: Kube, snap: Snapshot, action: CreatePod, caches: Caches) -> None:
    """Create the pod (and its inputs) unless it exists; remember it if the apiserver refuses.

    A refusal (bad template, admission policy) is permanent: it is recorded so the core sees a
    failed pod with the apiserver's message instead of the run retrying forever.
    """
    loop = snap.observed.loop
    assert loop.spec is not None
    owner = owner_reference(snap.run)
    namespace = snap.run["metadata"]["namespace"]
    uid = snap.run["metadata"]["uid"]
    manifest = render_pod(
        action.pod,
        snap.run,
        loop.name,
        loop.spec,
        snap.observed.spec,
        loop.spec.memory_config_map(loop.name),
        owner,
    )
    try:
        try:
            await kube.call(
                kube.core.create_namespaced_config_map,
                namespace,
                render_inputs(action.pod, snap.run, owner),
            )
        except Exception as err:
            if not is_status(err, 409):
                raise
        await kube.call(
            kube.core.create_namespaced_pod, namespace, manifest, field_validation="Strict"
        )
        PODS_CREATED.labels(action.pod.role.value).inc()
        log.info("pod created", extra={"pod": action.pod.name, "role": action.pod.role.value})
    except Exception as err:
        message = _api_message(err)
        # 400/422: the template is invalid; 403 from admission (PodSecurity) will not change,
        # but a quota 403 may, so that one is retried like any transient error
        permanent = is_status(err, 400, 422) or (
            is_status(err, 403) and "exceeded quota" not in message
        )
        if permanent:
            caches.rejected[(uid, action.pod.name)] = message[:1000]
            log.warning("pod rejected", extra={"pod": action.pod.name, "why": message})
            return
        if not is_status(err, 409):
            raise
        await _adopt_or_reject(kube, snap, action, caches)


async def _adopt_or_reject(kube: Kube, snap: Snapshot, action: CreatePod, caches: Caches) -> None:
    """A pod with our deterministic name exists: ours (adopt), on its way out, or someone else's."""
    meta = snap.run["metadata"]
    existing = await kube.call(kube.core.read_namespaced_pod, action.pod.name, meta["namespace"])
    owners = existing["metadata"].get("ownerReferences") or []
    if any(o.get("uid") == meta["uid"] for o in owners):
        log.info("pod exists, adopted", extra={"pod": action.pod.name})
        return
    predecessor = any(o.get("kind") == "LoopRun" and o.get("name") == meta["name"] for o in owners)
    if existing["metadata"].get("deletionTimestamp") or predecessor:
        # a deleted run of the same name: its pods are being garbage-collected; try again later
        log.info("pod of a previous run still exists, waiting", extra={"pod": action.pod.name})
        return
    caches.rejected[(meta["uid"], action.pod.name)] = (
        f"a pod named {action.pod.name} already exists and belongs to something else"
    )


async def _delete_pod(kube: Kube, namespace: str, action: DeletePod) -> None:
    try:
        await kube.call(kube.core.delete_namespaced_pod, action.name, namespace)
        log.info("pod deleted", extra={"pod": action.name, "why": action.why})
    except Exception as err:
        if not is_status(err, 404):
            raise


async def _append_memory(kube: Kube, snap: Snapshot, entries: list[Json]) -> None:
    """Append this run's finished iterations, then record on the run that they are in memory."""
    loop = snap.observed.loop
    if loop.spec is None or snap.loop is None or not entries:
        return
    await memory.append(
        kube,
        snap.run["metadata"]["namespace"],
        loop.spec.memory_config_map(loop.name),
        entries,
        snap.loop,
        loop.spec.goal,
        loop.spec.memory.keep_iterations,
        loop.spec.memory.max_bytes,
    )
    await _record_memory_through(kube, snap, max(int(e["iteration"]) for e in entries))


async def _record_memory_through(kube: Kube, snap: Snapshot, through: int) -> None:
    """Patch ``status.memoryRecordedThrough`` after a successful append.

    A merge patch of one field, so it never fights the status replace. A crash before it is
    covered by the ConfigMap's registry of recent runs (observe takes the larger of both), and the
    next pass copies that into status.
    """
    meta = snap.run["metadata"]
    if through <= ((snap.run.get("status") or {}).get("memoryRecordedThrough") or 0):
        return
    try:
        updated = await kube.call(
            kube.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            meta["namespace"],
            "loopruns",
            meta["name"],
            {"status": {"memoryRecordedThrough": through}},
        )
    except Exception as err:
        if is_status(err, 404):
            return  # the run was deleted meanwhile
        raise
    meta["resourceVersion"] = updated["metadata"]["resourceVersion"]
    snap.run.setdefault("status", {})["memoryRecordedThrough"] = through


async def _evaluate_oracle(snap: Snapshot, action: EvaluateOracle, caches: Caches) -> None:
    loop = snap.observed.loop.spec
    assert loop is not None
    checker = next(c for c in loop.checkers if c.name == action.checker)
    assert checker.http is not None
    key = (snap.run["metadata"]["uid"], action.iteration, action.checker)
    if key not in caches.oracles:
        caches.oracles[key] = await oracles.evaluate(checker.http)


async def update_loop_status(kube: Kube, snap: Snapshot, decision: Decision) -> None:
    """Keep the Loop's LAST RUN / PHASE columns current (a status merge patch; never the spec)."""
    if snap.loop is None or decision.status.phase is None:
        return
    wanted = {
        "lastRun": snap.run["metadata"]["name"],
        "phase": decision.status.phase.value,
        "lastRunTime": decision.status.started_at,
    }
    current = snap.loop.get("status") or {}
    if all(current.get(k) == v for k, v in wanted.items()):
        return
    if current.get("lastRunTime") and (wanted["lastRunTime"] or "") < current["lastRunTime"]:
        return  # a newer run owns the columns
    meta = snap.loop["metadata"]
    await kube.call(
        kube.custom.patch_namespaced_custom_object_status,
        GROUP,
        VERSION,
        meta["namespace"],
        "loops",
        meta["name"],
        {"status": wanted},
    )


async def apply(kube: Kube, snap: Snapshot, decision: Decision, caches: Caches) -> bool:
    """Apply a decision; False when status could not be written (re-observe and decide again)."""
    try:
        await write_status(kube, snap, decision)
    except Conflict:
        return False
    record_transition(
        snap.run["metadata"]["namespace"],
        snap.observed.loop.name,
        snap.observed.status,
        decision.status,
    )
    namespace = snap.run["metadata"]["namespace"]
    for action in decision.actions:  # events first: they must match the status just written
        if isinstance(action, RecordEvent):
            await events.record(kube, snap.run, action.type, action.reason, action.message)
    entries = [a.entry for a in decision.actions if isinstance(a, AppendMemory)]
    await _append_memory(kube, snap, entries)
    for action in decision.actions:
        if isinstance(action, CreatePod):
            await _create_pod(kube, snap, action, caches)
        elif isinstance(action, DeletePod):
            await _delete_pod(kube, namespace, action)
        elif isinstance(action, EvaluateOracle):
            await _evaluate_oracle(snap, action, caches)
    await update_loop_status(kube, snap, decision)
    return True
