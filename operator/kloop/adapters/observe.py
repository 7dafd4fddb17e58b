"""Gather everything the core needs about one LoopRun, in a handful of API reads."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import ValidationError

from kloop.adapters import memory
from kloop.adapters.egress import EgressGuard
from kloop.adapters.kube import Json, Kube, is_status
from kloop.adapters.notify import Notifier
from kloop.adapters.pods import observe_pod
from kloop.api import GROUP, VERSION
from kloop.api.loop import LoopSpec
from kloop.api.looprun import LoopRunSpec, LoopRunStatus
from kloop.core import names
from kloop.core.memory import recorded_through
from kloop.core.model import ObservedCluster, ObservedLoop, ObservedPod, ObservedRun, OracleOutcome

CLUSTER_LABEL = "kloop.dev/cluster"
OPERATOR_NAMESPACE = os.environ.get("KLOOP_OPERATOR_NAMESPACE", "kloop-system")


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
    """

    oracles: dict[tuple[str, int, str], OracleOutcome] = field(default_factory=dict)
    rejected: dict[tuple[str, str], str] = field(default_factory=dict)
    created: dict[tuple[str, str], str] = field(default_factory=dict)
    untrusted: dict[tuple[str, str], str] = field(default_factory=dict)
    write_rejected: dict[str, tuple[str, str]] = field(default_factory=dict)
    pending: dict[tuple[str, int, str], asyncio.Task[None]] = field(default_factory=dict)
    egress: EgressGuard = field(default_factory=EgressGuard)
    wake: Callable[[str, str], None] = _nobody
    notifier: Notifier = field(default_factory=Notifier)
    """Notification deliveries: not cancelled by ``forget``, so a run's last event still goes."""

    def forget(self, uid: str) -> None:
        """Drop what belongs to a finished or deleted run, and cancel its oracle queries."""
        self.oracles = {k: v for k, v in self.oracles.items() if k[0] != uid}
        self.rejected = {k: v for k, v in self.rejected.items() if k[0] != uid}
        self.created = {k: v for k, v in self.created.items() if k[0] != uid}
        self.untrusted = {k: v for k, v in self.untrusted.items() if k[0] != uid}
        self.write_rejected.pop(uid, None)
        for key in [k for k in self.pending if k[0] == uid]:
            self.pending.pop(key).cancel()


@dataclass
class Snapshot:
    """The observed run for the core, plus the raw objects the I/O layer writes back to."""

    observed: ObservedRun
    run: Json
    loop: Json | None


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


async def _clusters(kube: Kube) -> dict[str, ObservedCluster]:
    """Target clusters: Secrets labelled kloop.dev/cluster=true in the operator's namespace."""
    try:
        secrets = await kube.call(
            kube.core.list_namespaced_secret,
            OPERATOR_NAMESPACE,
            label_selector=f"{CLUSTER_LABEL}=true",
        )
    except Exception as err:
        if is_status(err, 403, 404):
            return {}
        raise
    return {
        s["metadata"]["name"]: ObservedCluster(
            s["metadata"]["name"], s["metadata"].get("labels") or {}
        )
        for s in secrets["items"]
    }


async def _loop(kube: Kube, namespace: str, name: str) -> tuple[ObservedLoop, Json | None]:
    try:
        raw = await kube.call(
            kube.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, "loops", name
        )
    except Exception as err:
        if is_status(err, 404):
            return ObservedLoop(name, None, f"Loop {name!r} not found in {namespace}"), None
        raise
    try:
        spec = LoopSpec.model_validate(raw.get("spec") or {})
    except ValidationError as err:
        problem = f"Loop {name!r} is invalid: {err.errors()[0]['msg']}"
        return ObservedLoop(name, None, problem, raw["metadata"]["uid"]), raw
    return ObservedLoop(name, spec, None, raw["metadata"]["uid"]), raw


async def _memory(
    kube: Kube, namespace: str, loop: ObservedLoop, uid: str, status: LoopRunStatus
) -> tuple[frozenset[int], str | None]:
    """Iterations of this run already in memory, and why memory is unusable (if it is).

    The run's status (``memoryRecordedThrough``) and the ConfigMap's registry of recent runs both
    count: the status holds for any number of later runs, the registry covers a crash between the
    append and the status patch.
    """
    if loop.spec is None:
        return frozenset(range(1, (status.memory_recorded_through or 0) + 1)), None
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
    """Read the run, its Loop, its pods and memory; None when the run is gone."""
    try:
        run = await kube.call(
            kube.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, "loopruns", name
        )
    except Exception as err:
        if is_status(err, 404):
            return None
        raise
    uid = run["metadata"]["uid"]
    spec = LoopRunSpec.model_validate(run["spec"])
    status = LoopRunStatus.model_validate(run.get("status") or {})
    loop, raw_loop = await _loop(kube, namespace, spec.loop_ref.name)
    pods = await kube.call(
        kube.core.list_namespaced_pod, namespace, label_selector=f"{names.LABEL_RUN}={name}"
    )
    owned = [
        p
        for p in pods["items"]
        if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])
    ]
    remembered, memory_conflict = await _memory(kube, namespace, loop, uid, status)
    observed_pods = {p["metadata"]["name"]: observe_pod(p) for p in owned}
    for (run_uid, pod), message in caches.rejected.items():
        if run_uid == uid and pod not in observed_pods:
            observed_pods[pod] = ObservedPod(pod, "Failed", reason="Rejected", message=message)
    for (run_uid, pod), message in caches.untrusted.items():
        if run_uid == uid:
            observed_pods[pod] = ObservedPod(pod, "Failed", reason="Untrusted", message=message)
    annotations = run["metadata"].get("annotations") or {}
    aborted_by = (
        _who_set(run, names.ANNOTATION_ABORT) if names.ANNOTATION_ABORT in annotations else None
    )
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
        memory_iterations=remembered,
        approvals=_approvals(run),
        aborted_by=aborted_by,
        clusters=await _clusters(kube) if loop.spec is not None and loop.spec.stages else {},
        uid=uid,
        memory_conflict=memory_conflict,
        created={pod: pod_uid for (u, pod), pod_uid in caches.created.items() if u == uid},
        write_rejected=caches.write_rejected.get(uid),
    )
    return Snapshot(observed, run, raw_loop)
