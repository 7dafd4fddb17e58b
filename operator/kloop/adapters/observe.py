"""Gather everything the core needs about one LoopRun, in a handful of API reads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import ValidationError

from kloop.adapters import memory
from kloop.adapters.kube import Json, Kube, is_status
from kloop.adapters.pods import observe_pod
from kloop.api import GROUP, VERSION
from kloop.api.loop import LoopSpec
from kloop.api.looprun import LoopRunSpec, LoopRunStatus
from kloop.core import names
from kloop.core.memory import appended_through
from kloop.core.model import ObservedLoop, ObservedPod, ObservedRun, OracleOutcome

CLUSTER_LABEL = "kloop.dev/cluster"
OPERATOR_NAMESPACE = os.environ.get("KLOOP_OPERATOR_NAMESPACE", "kloop-system")


@dataclass
class Caches:
    """What the I/O layer learned that is not stored in the cluster, keyed by run uid.

    Oracle answers and pods the apiserver refused are fed back to the core as observations;
    after a restart they are simply asked again.
    """

    oracles: dict[tuple[str, int, str], OracleOutcome] = field(default_factory=dict)
    rejected: dict[tuple[str, str], str] = field(default_factory=dict)

    def forget(self, uid: str) -> None:
        """Drop what belongs to a finished or deleted run."""
        self.oracles = {k: v for k, v in self.oracles.items() if k[0] != uid}
        self.rejected = {k: v for k, v in self.rejected.items() if k[0] != uid}


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


async def _clusters(kube: Kube) -> dict[str, dict[str, str]]:
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
    return {s["metadata"]["name"]: s["metadata"].get("labels") or {} for s in secrets["items"]}


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
    kube: Kube, namespace: str, loop: ObservedLoop, uid: str
) -> tuple[frozenset[int], str | None]:
    """Iterations of this run already in memory, and why memory is unusable (if it is)."""
    if loop.spec is None:
        return frozenset(), None
    name = loop.spec.memory_config_map(loop.name)
    log, cm = await memory.read_log(kube, namespace, name)
    if cm is not None and (cm["metadata"].get("labels") or {}).get(memory.LOOP_LABEL) != loop.name:
        return frozenset(), (
            f"ConfigMap {name!r} exists but is not the memory of Loop {loop.name!r} (no label "
            f"{memory.LOOP_LABEL}={loop.name}); kloop will not overwrite it: set "
            "spec.memory.configMapName to an unused name"
        )
    return frozenset(range(1, appended_through(log, uid) + 1)), None


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
    remembered, memory_conflict = await _memory(kube, namespace, loop, uid)
    observed_pods = {p["metadata"]["name"]: observe_pod(p) for p in owned}
    for (run_uid, pod), message in caches.rejected.items():
        if run_uid == uid and pod not in observed_pods:
            observed_pods[pod] = ObservedPod(pod, "Failed", reason="Rejected", message=message)
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
    )
    return Snapshot(observed, run, raw_loop)
