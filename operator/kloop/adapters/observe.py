"""Gather everything the core needs about one LoopRun, in a handful of API reads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import ValidationError

from kloop.adapters import memory, targets
from kloop.adapters.clusters import ClusterRegistry
from kloop.adapters.drift import TargetClient
from kloop.adapters.egress import EgressGuard
from kloop.adapters.kube import Json, Kube, is_status
from kloop.adapters.notify import Notifier
from kloop.adapters.pods import LABEL_RUN_UID, observe_pod
from kloop.adapters.store import Store
from kloop.api import GROUP, VERSION
from kloop.api.loop import LoopSpec
from kloop.api.looprun import LoopRunSpec, LoopRunStatus, Phase
from kloop.core import names
from kloop.core.memory import recorded_through
from kloop.core.model import (
    LOCAL_CLUSTER,
    ConnectorOutcome,
    DriftOutcome,
    ObservedCluster,
    ObservedLoop,
    ObservedPod,
    ObservedRun,
    OracleOutcome,
)


def _nobody(namespace: str, name: str) -> None:
    """Default waker: nothing to wake (unit use, tools)."""


@dataclass
class Caches:
    """What the I/O layer learned that is not stored in the cluster, keyed by run uid.

    Oracle answers, pods the apiserver refused, the uids of pods this process created, pods
    found under a name kloop was about to use, and writes refused for good are fed back to the
    core as observations; after a restart they are simply asked again (or, for created uids,
    the pods are adopted by name because status shows kloop asked for them). Oracle queries run
    as background tasks
    (``pending``) so a slow server never blocks the run's other decisions; when one ends it
    stores its outcome and calls ``wake(namespace, name)`` so the run's driver looks again.
    Drift measurements run the same way (``drift``, pending under ``drift_key``), in the cluster
    that ``target_client`` resolves (None: only ``local``, the operator's own cluster).
    """

    oracles: dict[tuple[str, int, str], OracleOutcome] = field(default_factory=dict)
    rejected: dict[tuple[str, str], str] = field(default_factory=dict)
    created: dict[tuple[str, str], str] = field(default_factory=dict)
    mint_failures: dict[tuple[str, str], int] = field(default_factory=dict)
    input_waits: dict[tuple[str, str], float] = field(default_factory=dict)
    """(run uid, pod) -> since when (monotonic) its inputs wait for a predecessor's to go."""
    untrusted: dict[tuple[str, str], str] = field(default_factory=dict)
    write_rejected: dict[str, tuple[str, str]] = field(default_factory=dict)
    pending: dict[tuple[str, int, str], asyncio.Task[None]] = field(default_factory=dict)
    egress: EgressGuard = field(default_factory=EgressGuard)
    clusters: ClusterRegistry = field(default_factory=ClusterRegistry)
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)
    """(run uid, cluster) -> expiry of the token minted for that target's latest agent pod."""
    cleaned: set[tuple[str, str]] = field(default_factory=set)
    """(run uid, pod): ended pods whose kubeconfig Secret is deleted (empty after a restart:
    each is then deleted once more, which answers 404)."""
    wake: Callable[[str, str], None] = _nobody
    drift: dict[tuple[str, int, str], DriftOutcome] = field(default_factory=dict)
    target_client: TargetClient | None = None
    connectors: dict[tuple[str, str, str], ConnectorOutcome] = field(default_factory=dict)
    """(run uid, stage, connector) -> the MCP handshake's outcome (pending under
    ``connector_key``)."""
    store: Store = field(default_factory=Store)
    """The newest copy of the runs, Loops and pods the operator watches (adapters/store.py)."""

    def cancel_queries(self, uid: str) -> None:
        """Cancel a run's oracle queries still in flight (the run has ended)."""
        for key in [k for k in self.pending if k[0] == uid]:
            self.pending.pop(key).cancel()

    notifier: Notifier = field(default_factory=Notifier)
    """Notification deliveries: not cancelled by ``forget``, so a run's last event still goes."""

    def forget(self, uid: str) -> None:
        """Drop what belongs to a finished or deleted run; cancel its oracle and drift tasks."""
        self.oracles = {k: v for k, v in self.oracles.items() if k[0] != uid}
        self.rejected = {k: v for k, v in self.rejected.items() if k[0] != uid}
        self.created = {k: v for k, v in self.created.items() if k[0] != uid}
        self.mint_failures = {k: v for k, v in self.mint_failures.items() if k[0] != uid}
        self.input_waits = {k: v for k, v in self.input_waits.items() if k[0] != uid}
        self.untrusted = {k: v for k, v in self.untrusted.items() if k[0] != uid}
        self.tokens = {k: v for k, v in self.tokens.items() if k[0] != uid}
        self.cleaned = {k for k in self.cleaned if k[0] != uid}
        self.write_rejected.pop(uid, None)
        self.drift = {k: v for k, v in self.drift.items() if k[0] != uid}
        self.connectors = {k: v for k, v in self.connectors.items() if k[0] != uid}
        for key in [k for k in self.pending if k[0] == uid]:
            self.pending.pop(key).cancel()


def connector_key(uid: str, stage: str, connector: str) -> tuple[str, int, str]:
    """The ``pending`` key of a connector handshake (``connector/`` never begins a checker)."""
    return (uid, 0, f"connector/{stage}/{connector}")


def drift_key(uid: str, iteration: int, cluster: str) -> tuple[str, int, str]:
    """The ``pending`` key of a drift measurement (``drift/`` never begins a checker name)."""
    return (uid, iteration, f"drift/{cluster}")


@dataclass
class Snapshot:
    """The observed run for the core, plus the raw objects the I/O layer writes back to."""

    observed: ObservedRun
    run: Json
    loop: Json | None
    pods: dict[str, Json] = field(default_factory=dict)
    """The run's own pods, as the store keeps them (``store.pod_view``: no spec but the container
    names, no conditions or restart counts)."""
    ended_targets: dict[str, str | None] = field(default_factory=dict)
    """Ended pods of remote targets whose kubeconfig Secret is still to delete -> its uid."""
    placed: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Pods kloop placed inside a target cluster (placement Target) -> (cluster, namespace)."""
    placed_ended: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Of those, the ended ones whose inputs and kubeconfig are still to delete there."""


log = logging.getLogger("kloop.observe")


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _who_set(obj: Json, annotation: str) -> str:
    """The field manager that set an annotation (e.g. kubectl-annotate), as the approver's name."""
    for entry in obj["metadata"].get("managedFields") or []:
        annotations = ((entry.get("fieldsV1") or {}).get("f:metadata") or {}).get(
            "f:annotations"
        ) or {}
        if f"f:{annotation}" in annotations:
            return str(entry.get("manager") or "unknown")
    return "unknown"


def approver(run: Json) -> str:
    """Who approved: ``kloop.dev/approved-by``, which the admission policy ties to the user.

    With the policy installed (docs/admission.md) the apiserver only stores approved-by equal to
    the authenticated user who changed kloop.dev/approve, and only if that user may ``approve``.
    Without approved-by (the policy is not installed) the field manager is all there is: it is
    chosen by the client, so it is recorded marked ``(unverified)``.
    """
    annotations = run["metadata"].get("annotations") or {}
    who = (annotations.get(names.ANNOTATION_APPROVED_BY) or "").strip()
    if who:
        return who
    return f"{_who_set(run, names.ANNOTATION_APPROVE)} (unverified)"


def _approvals(run: Json) -> dict[str, str]:
    value = (run["metadata"].get("annotations") or {}).get(names.ANNOTATION_APPROVE)
    if not value:
        return {}
    who = approver(run)
    return {stage.strip(): who for stage in value.split(",") if stage.strip()}


def resumes(run: Json) -> dict[int, str]:
    """Paused iterations a human resumed: ``kloop.dev/resume: "7"`` (a comma list of numbers).

    Who resumed is ``kloop.dev/resumed-by``, which the kloop-approvals admission policy ties to
    the authenticated user allowed to ``approve`` (docs/admission.md); without it, the field
    manager that set the annotation, marked ``(unverified)``.
    """
    annotations = run["metadata"].get("annotations") or {}
    value = annotations.get(names.ANNOTATION_RESUME) or ""
    numbers = [part.strip() for part in value.split(",")]
    who = (annotations.get(names.ANNOTATION_RESUMED_BY) or "").strip() or (
        f"{_who_set(run, names.ANNOTATION_RESUME)} (unverified)"
    )
    return {int(n): who for n in numbers if n.isdigit()}


async def _loop(
    kube: Kube, store: Store, namespace: str, name: str
) -> tuple[ObservedLoop, Json | None]:
    raw = store.loops.get((namespace, name))
    if raw is None:  # not seen on the watch (yet, or another shard's): read it for real
        # not stored: only the watch keeps a stored Loop current
        try:
            raw = await kube.call(
                kube.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, "loops", name
            )
        except Exception as err:
            if is_status(err, 404):
                return ObservedLoop(name, None, f"Loop {name!r} not found in {namespace}"), None
            raise
    try:
        spec = _loop_spec(raw)
    except ValidationError as err:
        problem = f"Loop {name!r} is invalid: {err.errors()[0]['msg']}"
        return ObservedLoop(name, None, problem, raw["metadata"]["uid"]), raw
    return ObservedLoop(name, spec, None, raw["metadata"]["uid"]), raw


_parsed_specs: dict[tuple[str, str], LoopSpec] = {}


def _loop_spec(raw: Json) -> LoopSpec:
    """The Loop's validated spec, parsed once per generation (a pass reads it every time)."""
    meta = raw["metadata"]
    key = (str(meta.get("uid")), str(meta.get("generation")))
    spec = _parsed_specs.get(key)
    if spec is None:
        spec = LoopSpec.model_validate(raw.get("spec") or {})
        if len(_parsed_specs) >= 1024:
            _parsed_specs.clear()
        _parsed_specs[key] = spec
    return spec


def _memory_matters(status: LoopRunStatus) -> bool:
    """Whether this pass must read the memory ConfigMap (up to 1 MB): only when it can matter.

    Before the first pod (whose name must not be a ConfigMap kloop may not write: the conflict
    check), and while a decided iteration is not yet recorded as in memory (the append, or a
    crash between the append and the status patch). Otherwise status already says it all.
    """
    if status.phase in (None, Phase.PENDING) or not status.iterations:
        return True
    recorded = status.memory_recorded_through or 0
    return any(r.decision is not None and r.number > recorded for r in status.iterations)


async def _memory(
    kube: Kube, namespace: str, loop: ObservedLoop, uid: str, status: LoopRunStatus
) -> tuple[frozenset[int], str | None]:
    """Iterations of this run already in memory, and why memory is unusable (if it is).

    The run's status (``memoryRecordedThrough``) and the ConfigMap's registry of recent runs both
    count: the status holds for any number of later runs, the registry covers a crash between the
    append and the status patch.
    """
    recorded = frozenset(range(1, (status.memory_recorded_through or 0) + 1))
    if loop.spec is None or not _memory_matters(status):
        return recorded, None
    name = loop.spec.memory_config_map(loop.name)
    log, cm = await memory.read_log(kube, namespace, name)
    if cm is not None and (cm["metadata"].get("labels") or {}).get(memory.LOOP_LABEL) != loop.name:
        return frozenset(), (
            f"ConfigMap {name!r} exists but is not the memory of Loop {loop.name!r} (no label "
            f"{memory.LOOP_LABEL}={loop.name}); kloop will not overwrite it: set "
            "spec.memory.configMapName to an unused name"
        )
    through = recorded_through(status.memory_recorded_through, log, uid)
    return frozenset(range(1, through + 1)), None


async def observe(kube: Kube, namespace: str, name: str, caches: Caches) -> Snapshot | None:
    """The run, its Loop, its pods and memory; None when the run is gone.

    The run, its Loop and its pods come from the watch store (adapters/store.py), read for
    real only when the store cannot answer; memory is read only when it can matter.
    """
    store = caches.store
    reseed = store.needs_seed(namespace, name)
    # read for real: unknown, stale after a conflict, or a periodic reseed (a watch gap can hide
    # a deletion; the first pass needs no second opinion, the run just came from the watch)
    run = None if reseed and store.seeded_once(namespace, name) else store.run(namespace, name)
    if run is None:
        try:
            run = await kube.call(
                kube.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                "loopruns",
                name,
            )
        except Exception as err:
            if is_status(err, 404):
                store.forget_run(namespace, name)
                return None
            raise
        store.put_run(run)
        store.unmark_stale(namespace, name)
    uid = run["metadata"]["uid"]
    spec = LoopRunSpec.model_validate(run["spec"])
    status = LoopRunStatus.model_validate(run.get("status") or {})
    loop, raw_loop = await _loop(kube, store, namespace, spec.loop_ref.name)
    if reseed:  # first pass, after an error, or a while since: list them for real
        store.begin_seed(namespace, name)
        listed = await kube.call(
            kube.core.list_namespaced_pod, namespace, label_selector=f"{names.LABEL_RUN}={name}"
        )
        store.seed_pods(namespace, name, listed)
    owned = [
        p
        for p in store.pods_of(namespace, name)
        if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])
    ]
    if loop.spec is not None and loop.spec.stages:
        clusters = await caches.clusters.observe(kube, namespace)
    else:
        clusters = {LOCAL_CLUSTER: ObservedCluster(LOCAL_CLUSTER)}
    token_expiry = targets.token_expiry(owned)
    token_expiry.update({c: t for (u, c), t in caches.tokens.items() if u == uid})
    ended = {
        pod: secret_uid
        for pod, secret_uid in targets.ended_remote_pods(owned).items()
        if (uid, pod) not in caches.cleaned
    }
    remembered, memory_conflict = await _memory(kube, namespace, loop, uid, status)
    observed_pods = {p["metadata"]["name"]: observe_pod(p) for p in owned}
    placed, placed_pods = await _placed_pods(caches, name, uid, status)
    observed_pods.update(placed_pods)
    placed_ended = {  # ended, or gone (never created, deleted): clean up what it was given
        pod: where
        for pod, where in placed.items()
        if (uid, pod) not in caches.cleaned
        and (
            placed_pods[pod].phase in ("Succeeded", "Failed")
            if pod in placed_pods
            else (uid, pod) in caches.created or (uid, pod) in caches.rejected
        )
    }
    for (run_uid, pod), message in caches.rejected.items():
        if run_uid == uid and pod not in observed_pods:
            observed_pods[pod] = ObservedPod(pod, "Failed", reason="Rejected", message=message)
    for (run_uid, pod), message in caches.untrusted.items():
        if run_uid == uid:
            observed_pods[pod] = ObservedPod(pod, "Failed", reason="Untrusted", message=message)
    annotations = run["metadata"].get("annotations") or {}
    aborted_by = None
    if names.ANNOTATION_ABORT in annotations:
        aborted_by = _who_set(run, names.ANNOTATION_ABORT)
        reason = (annotations.get(names.ANNOTATION_ABORT_REASON) or "").strip()[:200]
        if reason:
            aborted_by = f"{aborted_by} ({reason})"
    observed = ObservedRun(
        name=name,
        namespace=namespace,
        generation=run["metadata"].get("generation") or 1,
        spec=spec,
        status=status,
        loop=loop,
        now=datetime.now(UTC),
        pods=observed_pods,
        oracles={(i, c): o for (u, i, c), o in caches.oracles.items() if u == uid},
        drift={(i, c): o for (u, i, c), o in caches.drift.items() if u == uid},
        connectors={(st, c): o for (u, st, c), o in caches.connectors.items() if u == uid},
        memory_iterations=remembered,
        approvals=_approvals(run),
        resumes=resumes(run),
        aborted_by=aborted_by,
        clusters=clusters,
        uid=uid,
        memory_conflict=memory_conflict,
        created={pod: pod_uid for (u, pod), pod_uid in caches.created.items() if u == uid},
        write_rejected=caches.write_rejected.get(uid),
        token_expiry=token_expiry,
        placed_cleaned=frozenset(pod for (u, pod) in caches.cleaned if u == uid),
    )
    pods_by_name = {p["metadata"]["name"]: p for p in owned}
    return Snapshot(observed, run, raw_loop, pods_by_name, ended, placed, placed_ended)


async def _placed_pods(
    caches: Caches, run: str, uid: str, status: LoopRunStatus
) -> tuple[dict[str, tuple[str, str]], dict[str, ObservedPod]]:
    """The pods kloop placed in target clusters and has not cleaned up, read from each target.

    They come from ``status.placedPods`` (kept after their iteration closed, so a failed delete
    or cleanup is retried). A target that does not answer gives its pods as ``Unknown`` (never
    as gone: that would read as lost): their timeouts still apply from when kloop asked.
    """
    tracked = {tp.name: tp for tp in status.placed_pods if tp.placed_in}
    placed: dict[str, tuple[str, str]] = {}
    for name, tp in tracked.items():
        cluster = str(tp.placed_in)
        namespace = tp.namespace
        if namespace is None:
            try:
                namespace = caches.clusters.agent_account(cluster)[0]
            except Exception:  # noqa: BLE001 - the cluster Secret changed: nowhere to look
                continue
        placed[name] = (cluster, namespace)
    found: dict[str, ObservedPod] = {}
    for where in sorted(set(placed.values())):
        cluster, namespace = where
        try:
            target = await caches.clusters.client(cluster)
            pods = await target.call(
                target.core.list_namespaced_pod,
                namespace,
                label_selector=f"{names.LABEL_RUN}={run},{LABEL_RUN_UID}={uid}",
            )
        except Exception as err:  # noqa: BLE001 - one target down must not stop the run
            log.warning("cannot read pods in cluster %s: %s", cluster, err)
            for name, at in placed.items():
                if at == where:
                    tp = tracked[name]
                    known = tp.uid or caches.created.get((uid, name)) or ""
                    started = _time(tp.requested_at)
                    found[name] = ObservedPod(name, "Unknown", created_at=started, uid=known)
            continue
        for pod in pods["items"]:
            if pod["metadata"]["name"] in placed:
                found[pod["metadata"]["name"]] = observe_pod(pod)
    return placed, found
