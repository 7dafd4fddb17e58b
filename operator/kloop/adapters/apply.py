"""Carry out a Decision: status first (optimistic concurrency), then the actions, in order.

Order: status, Events, memory (then a one-field status patch, ``memoryRecordedThrough``), pods,
oracles, drift measurements and connector handshakes (the last three in the background). The
Loop's status (its LAST RUN / PHASE columns) is written by the Loop controller (``kloop/loops.py``)
alone, woken by this run's events. Writing status before side effects
means a crash in between only repeats idempotent actions (pods and ConfigMaps have deterministic
names; memory appends are keyed by run uid and iteration).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from kloop.adapters import drift, events, memory, oracles, targets
from kloop.adapters.clusters import MintRefused, token_seconds
from kloop.adapters.kube import (
    Json,
    Kube,
    api_message,
    is_permanent,
    is_status,
    owner_reference,
)
from kloop.adapters.observe import Caches, Snapshot, connector_key, drift_key
from kloop.adapters.pods import (
    place_in_target,
    place_object_in_target,
    render_inputs,
    render_pod,
)
from kloop.api import GROUP, VERSION
from kloop.api.conditions import Reason
from kloop.core import names
from kloop.core.drift import failed as drift_failed
from kloop.core.model import (
    LOCAL_CLUSTER,
    AppendMemory,
    CheckConnector,
    ConnectorOutcome,
    CreatePod,
    Decision,
    DeletePod,
    EvaluateOracle,
    MeasureDrift,
    OracleOutcome,
    RecordEvent,
)
from kloop.core.notify import RunRef
from kloop.metrics import PODS_CREATED, RUNS, record_transition

log = logging.getLogger("kloop.apply")
INPUT_ATTEMPTS = 3
"""Create-or-replace rounds for a pod's inputs before the pass gives up (the next one retries)."""
INPUT_WAIT_SECONDS = 300.0
"""How long a pod waits for a predecessor's inputs ConfigMap to be collected (seconds, normally
a few): one held by a finalizer or an owner the collector cannot resolve fails the run."""


class Conflict(Exception):
    """Someone changed the LoopRun since we read it: observe again."""


class InputsUnsettled(Exception):
    """A pod's inputs ConfigMap is a deleted run's, or kept vanishing: try on a later pass."""


class Gone(Exception):
    """The LoopRun no longer exists (deleted while its task still had it, e.g. in a watch gap)."""


class PermanentWriteError(Exception):
    """The apiserver refused one of the run's own writes for good (a 4xx but 409/429)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


async def write_status(kube: Kube, snap: Snapshot, decision: Decision) -> None:
    """Replace the status subresource, guarded by the resourceVersion we read."""
    old = snap.run.get("status") or {}
    new = decision.status.to_kube()
    if old.get("kopf") is not None:
        new["kopf"] = old["kopf"]
    # the notifier owns status.notifications (merge patches): a replace carries what it read
    new.pop("notifications", None)
    if old.get("notifications"):
        new["notifications"] = old["notifications"]
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
        if is_status(err, 404):
            raise Gone(str(err)) from err
        if is_permanent(err):
            raise _refused(Reason.STATUS_REJECTED, "the run's status", err) from err
        raise
    snap.run = updated  # rebound, never edited: the old body may be the store's copy
    _check_not_pruned(new, updated.get("status") or {})


def _tracked(status: Json) -> int:
    return sum(len(r.get("pods") or []) for r in status.get("iterations") or [])


def _check_not_pruned(written: Json, stored: Json) -> None:
    """Fail loudly when the apiserver dropped the pods kloop tracks: the CRD is too old.

    An older LoopRun CRD prunes fields it does not know; without ``iterations[].pods`` kloop
    would no longer recognise its own pods and refuse every result as untrusted.
    """
    if _tracked(written) and not _tracked(stored):
        raise PermanentWriteError(
            Reason.STATUS_REJECTED,
            "the apiserver dropped status.iterations[].pods: the installed LoopRun CRD is older "
            "than this operator; apply the CRDs that ship with it (kubectl apply -f crds/)",
        )


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
    if action.pod.in_target:
        await _create_placed_pod(snap, action, caches, manifest, owner)
        return
    secret_uid: str | None = None
    try:
        await _write_inputs(kube, namespace, render_inputs(action.pod, snap.run, owner))
        if action.pod.cluster != LOCAL_CLUSTER:
            secret_uid = await _mint_or_give_up(kube, snap, action, caches, manifest)
            if secret_uid is None:
                return
        pod = await kube.call(
            kube.core.create_namespaced_pod, namespace, manifest, field_validation="Strict"
        )
        caches.created[(uid, action.pod.name)] = pod["metadata"]["uid"]
        caches.store.put_pod(pod)  # the next pass sees it before its watch event arrives
        PODS_CREATED.labels(action.pod.role.value).inc()
        log.info("pod created", extra={"pod": action.pod.name, "role": action.pod.role.value})
    except MintRefused as err:
        caches.rejected[(uid, action.pod.name)] = str(err)[:1000]
        log.warning("no token for the pod", extra={"pod": action.pod.name, "why": str(err)})
    except InputsUnsettled as err:  # before any token was minted: nothing to clean up
        if not waited_too_long(caches.input_waits, (uid, action.pod.name), time.monotonic()):
            raise
        message = f"{err}; still there after {INPUT_WAIT_SECONDS:.0f}s"
        caches.rejected[(uid, action.pod.name)] = message[:1000]
        log.warning("pod inputs blocked", extra={"pod": action.pod.name, "why": message})
    except Exception as err:
        message = api_message(err)
        # a 4xx but 409/429 (invalid template, admission policy, quota) will not change by
        # itself: the run fails with the apiserver's reason instead of retrying in silence
        if is_permanent(err):
            caches.rejected[(uid, action.pod.name)] = message[:1000]
            log.warning("pod rejected", extra={"pod": action.pod.name, "why": message})
            if secret_uid is not None:  # no pod will use the token
                await targets.delete_target_secret(
                    kube, namespace, names.target_secret_name(action.pod.name), secret_uid
                )
            return
        if secret_uid is not None:  # the pod is not ours (or not there): its token must not stay
            await targets.delete_target_secret(
                kube, namespace, names.target_secret_name(action.pod.name), secret_uid
            )
        if not is_status(err, 409):
            raise
        await _adopt_or_reject(kube, snap, action, caches)


async def _create_placed_pod(
    snap: Snapshot, action: CreatePod, caches: Caches, manifest: Json, owner: Json
) -> None:
    """Create a pod inside its target cluster (placement Target), with its inputs and kubeconfig.

    It runs in the agent ServiceAccount's namespace there, as that account, and reaches the
    target's API with a token minted for it (the same kubeconfig a hub pod gets). A refusal is
    recorded like any rejected pod; a target that does not answer is retried, then given up.
    Whatever was written for a pod that is not created is removed again.
    """
    uid = snap.run["metadata"]["uid"]
    key = (uid, action.pod.name)
    cluster = action.pod.cluster
    namespace: str | None = None
    try:
        target = await caches.clusters.client(cluster)
        namespace, account = caches.clusters.agent_account(cluster)
        inputs = place_object_in_target(render_inputs(action.pod, snap.run, owner), namespace)
        await _write_inputs(target, namespace, inputs)
        minted = await caches.clusters.mint(
            cluster, token_seconds(manifest["spec"].get("activeDeadlineSeconds"))
        )
        secret = place_object_in_target(
            targets.render_target_secret(action.pod.name, snap.run, owner, cluster, minted.text),
            namespace,
        )
        await targets.write_target_secret(target, secret)
        caches.tokens[(uid, cluster)] = minted.expires_at
        placed = place_in_target(manifest, namespace, account, uid)
        pod = await target.call(
            target.core.create_namespaced_pod, namespace, placed, field_validation="Strict"
        )
    except Exception as err:
        given_up = _placed_failure(caches, key, cluster, err)
        if given_up and namespace is not None:
            with contextlib.suppress(Exception):  # best effort: cleanup retries it later
                await _remove_placed_inputs(caches, action.pod.name, cluster, namespace)
        if not given_up:
            raise
        return
    caches.created[key] = pod["metadata"]["uid"]
    caches.cleaned.discard(key)
    caches.mint_failures.pop(key, None)
    PODS_CREATED.labels(action.pod.role.value).inc()
    log.info("pod created in its target", extra={"pod": action.pod.name, "cluster": cluster})


def _placed_failure(caches: Caches, key: tuple[str, str], cluster: str, err: BaseException) -> bool:
    """Record why a placed pod was not created; False when it is worth another pass."""
    if isinstance(err, MintRefused):
        caches.rejected[key] = str(err)[:1000]
    elif is_permanent(err):
        caches.rejected[key] = f"cluster {cluster!r} refused the pod: {api_message(err)}"[:1000]
    elif is_status(err, 409):
        caches.untrusted[key] = (
            f"a pod named {key[1]} already exists in cluster {cluster!r}: not trusted"
        )
    else:
        failures = caches.mint_failures.get(key, 0) + 1
        caches.mint_failures[key] = failures
        if failures < MINT_ATTEMPTS:
            return False
        caches.rejected[key] = (
            f"cluster {cluster!r} unavailable: pod not created after {failures} tries: "
            f"{api_message(err)}"
        )[:1000]
    return True


async def _remove_placed_inputs(caches: Caches, pod: str, cluster: str, namespace: str) -> None:
    """Delete a placed pod's inputs ConfigMap and kubeconfig Secret in its target (404 is fine)."""
    target = await caches.clusters.client(cluster)
    for call, name in (
        (target.core.delete_namespaced_secret, names.target_secret_name(pod)),
        (target.core.delete_namespaced_config_map, names.inputs_config_map_name(pod)),
    ):
        try:
            await target.call(call, name, namespace)
        except Exception as err:
            if not is_status(err, 404):
                raise


async def _forget_placed(snap: Snapshot, pod: str, where: tuple[str, str], caches: Caches) -> None:
    """Delete a placed pod's inputs and kubeconfig in its target once it ended (or is gone)."""
    await _remove_placed_inputs(caches, pod, *where)
    caches.cleaned.add((snap.run["metadata"]["uid"], pod))


MINT_ATTEMPTS = 3
"""Passes in a row a target may fail to mint a token before its pod is given up on."""


async def _mint_or_give_up(
    kube: Kube, snap: Snapshot, action: CreatePod, caches: Caches, manifest: Json
) -> str | None:
    """The target Secret's uid; None once the target failed to answer MINT_ATTEMPTS times.

    A target that is down must not hold the run (or its other targets) forever: after a few
    failed passes the pod counts as rejected, with the target's error, and the core fails that
    target as it would for any pod the apiserver refused.
    """
    key = (snap.run["metadata"]["uid"], action.pod.name)
    try:
        secret_uid = await _write_target(kube, snap, action, caches, manifest)
    except MintRefused:
        raise
    except Exception as err:
        failures = caches.mint_failures.get(key, 0) + 1
        caches.mint_failures[key] = failures
        if failures < MINT_ATTEMPTS:
            raise
        caches.rejected[key] = (
            f"cluster {action.pod.cluster!r} unavailable: no token after {failures} tries: "
            f"{api_message(err)}"
        )[:1000]
        log.warning("target unavailable, pod given up", extra={"pod": action.pod.name})
        return None
    caches.mint_failures.pop(key, None)
    return secret_uid


async def _write_target(
    kube: Kube, snap: Snapshot, action: CreatePod, caches: Caches, manifest: Json
) -> str:
    """Mint a token in the pod's target cluster and write its kubeconfig Secret; its uid.

    The token lives as long as the pod may (activeDeadlineSeconds plus a margin). The pod is
    annotated with the Secret's uid and the token's expiry, so both survive an operator restart.
    """
    pod = action.pod
    minted = await caches.clusters.mint(
        pod.cluster, token_seconds(manifest["spec"].get("activeDeadlineSeconds"))
    )
    body = targets.render_target_secret(
        pod.name, snap.run, owner_reference(snap.run), pod.cluster, minted.text
    )
    secret_uid = await targets.write_target_secret(kube, body)
    annotations = manifest["metadata"]["annotations"]
    annotations[names.ANNOTATION_TARGET_SECRET_UID] = secret_uid
    annotations[names.ANNOTATION_TOKEN_EXPIRES_AT] = minted.expires_at
    caches.tokens[(snap.run["metadata"]["uid"], pod.cluster)] = minted.expires_at
    log.info(
        "token minted for the pod",
        extra={"pod": pod.name, "cluster": pod.cluster, "expires": minted.expires_at},
    )
    return secret_uid


async def _write_inputs(kube: Kube, namespace: str, inputs: Json) -> None:
    """Create the pod's inputs ConfigMap, or overwrite one that exists with kloop's content.

    One that exists was written by an earlier attempt of ours or planted to feed the pod a
    forged maker.json or feedback.json: either way the pod must read what kloop decided. One
    left by a deleted run of the same name is never taken over: the garbage collector may still
    delete it (by uid) after our replace, leaving the pod without inputs. A later pass creates a
    new one once it is gone; a replace that finds it gone already creates again.
    """
    name = inputs["metadata"]["name"]
    for _ in range(INPUT_ATTEMPTS):
        try:
            await kube.call(kube.core.create_namespaced_config_map, namespace, inputs)
            return
        except Exception as err:
            if not is_status(err, 409):
                raise
        try:
            owners = inputs["metadata"].get("ownerReferences")  # in a target: none, no collector
            if owners:
                existing = await kube.call(kube.core.read_namespaced_config_map, name, namespace)
                if left_by_predecessor(existing, owners[0]):
                    raise InputsUnsettled(
                        f"ConfigMap {namespace}/{name} is a deleted run's, still being "
                        "garbage-collected: it is created anew once it is gone"
                    )
            await kube.call(kube.core.replace_namespaced_config_map, name, namespace, inputs)
            return
        except Exception as err:
            if not is_status(err, 404):
                raise
    raise InputsUnsettled(f"ConfigMap {namespace}/{name} kept appearing and vanishing")


def waited_too_long(waits: dict[tuple[str, str], float], key: tuple[str, str], now: float) -> bool:
    """Whether a pod has waited ``INPUT_WAIT_SECONDS`` for its inputs (the first call starts it)."""
    return now - waits.setdefault(key, now) >= INPUT_WAIT_SECONDS


def left_by_predecessor(existing: Json, owner: Json) -> bool:
    """Whether ``existing`` is being deleted or belongs to an earlier ``owner`` of that name.

    ``owner`` is our run's ownerReference: an object of a deleted run of the same name (another
    uid) is the garbage collector's, soon gone; kloop waits for it rather than taking it over.
    """
    meta = existing.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return True
    return any(
        _owner_key(theirs) == _owner_key(owner) and theirs.get("uid") != owner.get("uid")
        for theirs in meta.get("ownerReferences") or []
    )


def _owner_key(owner: Json) -> tuple[str, str, str]:
    """An owner's API group, kind and name: a LoopRun of our name in another group is not ours."""
    group = str(owner.get("apiVersion") or "").rpartition("/")[0]
    return group, str(owner.get("kind")), str(owner.get("name"))


async def _adopt_or_reject(kube: Kube, snap: Snapshot, action: CreatePod, caches: Caches) -> None:
    """A pod with our deterministic name appeared since we looked: a predecessor's, or not ours.

    kloop lists the run's pods (a consistent read) before asking for one, so a pod that exists
    when it creates it was made by someone else in between — even if it names this run as its
    owner. It is never adopted: the core sees it as untrusted.
    """
    meta = snap.run["metadata"]
    key = (meta["uid"], action.pod.name)
    found = await kube.call(  # list, not get: the operator's RBAC has no get on pods
        kube.core.list_namespaced_pod,
        meta["namespace"],
        field_selector=f"metadata.name={action.pod.name}",
    )
    if not found["items"]:
        return  # gone again already: the next pass asks for it anew
    existing = found["items"][0]
    owners = existing["metadata"].get("ownerReferences") or []
    if any(o.get("uid") == meta["uid"] for o in owners):
        caches.untrusted[key] = (
            f"a pod named {action.pod.name} appeared before kloop created it: not trusted"
        )
        log.warning("untrusted pod under our name", extra={"pod": action.pod.name})
        return
    if left_by_predecessor(existing, owner_reference(snap.run)):
        # a deleted run of the same name: its pods are being garbage-collected; try again later
        log.info("pod of a previous run still exists, waiting", extra={"pod": action.pod.name})
        return
    caches.rejected[key] = (
        f"a pod named {action.pod.name} already exists and belongs to something else"
    )


async def _delete_pod(kube: Kube, snap: Snapshot, action: DeletePod, caches: Caches) -> None:
    namespace = snap.run["metadata"]["namespace"]
    where = snap.placed.get(action.name)
    if where is not None:  # it runs in its target: delete it there, with what it was given
        target = await caches.clusters.client(where[0])
        try:
            await target.call(target.core.delete_namespaced_pod, action.name, where[1])
        except Exception as err:
            if not is_status(err, 404):
                raise
        await _forget_placed(snap, action.name, where, caches)
        log.info("pod deleted in its target", extra={"pod": action.name, "why": action.why})
        return
    try:
        await kube.call(kube.core.delete_namespaced_pod, action.name, namespace)
        log.info("pod deleted", extra={"pod": action.name, "why": action.why})
    except Exception as err:
        if not is_status(err, 404):
            raise
    pod = snap.pods.get(action.name)
    if pod is not None and targets.is_remote(pod):  # a stopped pod's token goes with it
        secret_uid = (pod["metadata"].get("annotations") or {}).get(
            names.ANNOTATION_TARGET_SECRET_UID
        )
        await _forget_target(kube, snap, action.name, secret_uid, caches)


async def _forget_target(
    kube: Kube, snap: Snapshot, pod: str, secret_uid: str | None, caches: Caches
) -> None:
    """Delete an ended pod's kubeconfig Secret, once per process."""
    run_uid = snap.run["metadata"]["uid"]
    if (run_uid, pod) in caches.cleaned:
        return
    await targets.delete_target_secret(
        kube, snap.run["metadata"]["namespace"], names.target_secret_name(pod), secret_uid
    )
    caches.cleaned.add((run_uid, pod))


async def _append_memory(kube: Kube, snap: Snapshot, decision: Decision) -> None:
    """Append the run's newly decided iterations to memory, before the status that follows them.

    The status write that comes next then records ``memoryRecordedThrough`` itself (one write
    fewer per iteration than a patch of its own). A crash or a conflict between the two is
    covered by the ConfigMap's registry of recent runs, which the next pass copies into status.
    """
    entries = [a.entry for a in decision.actions if isinstance(a, AppendMemory)]
    loop = snap.observed.loop
    if loop.spec is None or snap.loop is None or not entries:
        return
    try:
        await _write_memory(kube, snap, entries)
    except memory.NotOurs as err:  # replaced mid-run by a ConfigMap that is not this Loop's
        raise PermanentWriteError(Reason.MEMORY_CONFLICT, str(err)) from err
    except Exception as err:
        if is_permanent(err):
            raise _refused(Reason.MEMORY_REJECTED, "the memory ConfigMap", err) from err
        raise
    through = max(int(e["iteration"]) for e in entries)
    if through > (decision.status.memory_recorded_through or 0):
        decision.status.memory_recorded_through = through


def _refused(reason: Reason, what: str, err: BaseException) -> PermanentWriteError:
    """A write refused for good, in the apiserver's words."""
    return PermanentWriteError(
        reason,
        f"the apiserver refused {what} ({getattr(err, 'status', '?')}): {api_message(err)}"[:1000],
    )


async def _write_memory(kube: Kube, snap: Snapshot, entries: list[Json]) -> None:
    loop = snap.observed.loop
    assert loop.spec is not None and snap.loop is not None
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


def _evaluate_oracle(snap: Snapshot, action: EvaluateOracle, caches: Caches) -> None:
    """Start the query in the background (once); its outcome lands in the caches, then a wake.

    The driver goes on reconciling meanwhile, so abort, deadline and a deleted Loop are acted on
    while a slow oracle answers; ``Caches.forget`` cancels the query when the run ends.
    """
    loop = snap.observed.loop.spec
    assert loop is not None
    checker = next(c for c in loop.checkers if c.name == action.checker)
    assert checker.http is not None
    http = checker.http
    meta = snap.run["metadata"]
    key = (meta["uid"], action.iteration, action.checker)
    if key in caches.oracles or key in caches.pending:
        return

    async def query() -> None:
        try:
            outcome = await oracles.evaluate(http, caches.egress)
        except Exception as err:  # noqa: BLE001 - a bug must not leave the checker pending
            log.exception("oracle query crashed", extra={"checker": action.checker})
            outcome = OracleOutcome("inconclusive", [f"oracle query crashed: {type(err).__name__}"])
        finally:
            caches.pending.pop(key, None)
        caches.oracles[key] = outcome
        caches.wake(meta["namespace"], meta["name"])

    caches.pending[key] = asyncio.create_task(query(), name=f"oracle {key}")


def _measure_drift(kube: Kube, snap: Snapshot, action: MeasureDrift, caches: Caches) -> None:
    """Measure drift in the target in the background (once), like an oracle query.

    The desired manifests are read with the operator's own client (they live in the run's
    namespace); the target's objects with the client ``caches.target_client`` gives for the
    cluster (``local``: the operator's own). Any failure is an error outcome, never a pass.
    """
    loop = snap.observed.loop.spec
    assert loop is not None
    meta = snap.run["metadata"]
    key = (meta["uid"], action.iteration, action.cluster)
    pending = drift_key(*key)
    if key in caches.drift or pending in caches.pending:
        return
    stage = next((s for s in loop.stages or [] if s.name == action.stage), None)
    spec = stage.drift if stage is not None else None

    async def target() -> Kube:
        if action.cluster == LOCAL_CLUSTER:
            return kube
        if caches.target_client is None:
            raise LookupError(f"cluster {action.cluster!r} has no API client in this operator")
        return await caches.target_client(action.cluster)

    async def run() -> None:
        try:
            if spec is None:
                outcome = drift_failed(f"stage {action.stage!r} has no drift settings")
            else:
                outcome = await drift.measure_stage(
                    kube, meta["namespace"], spec, target, action.cluster == LOCAL_CLUSTER
                )
        except Exception as err:  # noqa: BLE001 - a bug must not leave the grader pending
            log.exception("drift measurement crashed", extra={"cluster": action.cluster})
            outcome = drift_failed(f"drift measurement crashed: {type(err).__name__}")
        finally:
            caches.pending.pop(pending, None)
        caches.drift[key] = outcome
        log.info(
            "drift measured",
            extra={"cluster": action.cluster, "drifted": outcome.objects, "error": outcome.error},
        )
        caches.wake(meta["namespace"], meta["name"])

    caches.pending[pending] = asyncio.create_task(run(), name=f"drift {key}")


def _check_connector(kube: Kube, snap: Snapshot, action: CheckConnector, caches: Caches) -> None:
    """The MCP handshake with a connector, in the background (once per stage), like an oracle."""
    loop = snap.observed.loop.spec
    connector = next(
        (c for c in (loop.connectors if loop else None) or [] if c.name == action.connector), None
    )
    meta = snap.run["metadata"]
    key = (meta["uid"], action.stage, action.connector)
    pending = connector_key(*key)
    if connector is None or key in caches.connectors or pending in caches.pending:
        return

    async def run() -> None:
        # imported on first use: the MCP SDK and its httpx2 cost ~30 MiB of RSS, and most
        # operators never probe a connector
        from kloop.adapters import connectors  # noqa: PLC0415

        try:
            outcome = await connectors.check(kube, meta["namespace"], connector, caches.egress)
        except Exception as err:  # noqa: BLE001 - a bug must not leave the stage waiting
            log.exception("connector check crashed", extra={"connector": action.connector})
            outcome = ConnectorOutcome(error=f"connector check crashed: {type(err).__name__}")
        finally:
            caches.pending.pop(pending, None)
        caches.connectors[key] = outcome
        caches.wake(meta["namespace"], meta["name"])

    caches.pending[pending] = asyncio.create_task(run(), name=f"connector {key}")


def _notify(kube: Kube, snap: Snapshot, decision: Decision, caches: Caches) -> None:
    """Queue the notifications this status write caused (delivered in the background)."""
    spec = snap.observed.loop.spec
    if spec is None or not spec.notify:
        return
    meta = snap.run["metadata"]
    run = RunRef(meta["namespace"], meta["name"], meta["uid"], snap.observed.loop.name)
    caches.notifier.dispatch(
        kube, caches.egress, run, spec.notify, snap.observed.status, decision.status
    )


async def apply(kube: Kube, snap: Snapshot, decision: Decision, caches: Caches) -> bool:
    """Apply a decision; False when status could not be written (re-observe and decide again)."""
    await _append_memory(kube, snap, decision)  # first: the next pods read memory
    try:
        await write_status(kube, snap, decision)
    except Conflict:
        return False
    caches.store.put_run(snap.run)
    obs = snap.observed
    record_transition(obs.namespace, obs.loop.name, obs.status, decision.status)
    RUNS.track(
        obs.uid, obs.namespace, obs.name, obs.loop.name, obs.loop.spec, obs.spec, decision.status
    )
    _notify(kube, snap, decision, caches)
    failed: list[Exception] = []
    for action in decision.actions:  # one failing action (a target down) never stops the others
        try:
            if isinstance(action, CreatePod):
                await _create_pod(kube, snap, action, caches)
            elif isinstance(action, DeletePod):
                await _delete_pod(kube, snap, action, caches)
            elif isinstance(action, EvaluateOracle):
                _evaluate_oracle(snap, action, caches)
            elif isinstance(action, MeasureDrift):
                _measure_drift(kube, snap, action, caches)
            elif isinstance(action, CheckConnector):
                _check_connector(kube, snap, action, caches)
        except PermanentWriteError:
            raise
        except Exception as err:  # noqa: BLE001 - retried with backoff once the others ran
            log.warning("action failed: %s: %s", type(action).__name__, err)
            failed.append(err)
    # after the pods, so the next pod is not held up by them; after the status they describe
    for action in decision.actions:
        if isinstance(action, RecordEvent):
            await events.record(kube, snap.run, action.type, action.reason, action.message)
    for pod, secret_uid in snap.ended_targets.items():
        await _forget_target(kube, snap, pod, secret_uid, caches)
    for pod, where in snap.placed_ended.items():
        try:
            await _forget_placed(snap, pod, where, caches)
        except Exception as err:  # noqa: BLE001 - retried on a later pass
            failed.append(err)
    if failed:
        raise failed[0]
    return True
