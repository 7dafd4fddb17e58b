"""Which pods the core believes: only those kloop asked for, and once seen only by their uid.

Pod names are deterministic, so anyone able to create pods could plant one under a name kloop is
about to use. Status records each pod kloop is about to create (``TrackedPod``) before it is
created; the uid the apiserver gave it is recorded once seen. See docs/runs.md.
"""

from __future__ import annotations

from kloop.api.conditions import Reason
from kloop.api.looprun import TrackedPod
from kloop.core.assess import PodError
from kloop.core.context import Pass
from kloop.core.model import CreatePod, ObservedPod, PodRequest

ABSENT = "Absent"
"""Phase of the ObservedPod ``own_pod`` returns for a pod still to be created."""


def own_pod(p: Pass, tracked: list[TrackedPod], name: str, who: str) -> ObservedPod | PodError:
    """The pod kloop created under ``name``, or why there is none it can trust.

    Returns a PodError (planted, swapped or lost), or an ObservedPod — phase ``Absent`` when it
    is still to be created. Records the pod's uid the first time it is seen.
    """
    entry = next((t for t in tracked if t.name == name), None)
    pod = p.obs.pods.get(name)
    if entry is None:
        if pod is not None:
            return PodError(
                Reason.UNTRUSTED_POD,
                f"{who} pod {name} exists but kloop never asked for it: its result is not trusted",
            )
        return ObservedPod(name, ABSENT)
    if pod is None:
        if entry.uid or p.obs.created.get(name):
            return PodError(
                Reason.POD_LOST,
                f"{who} pod {name} disappeared before its result was recorded "
                "(deleted, drained or evicted)",
            )
        return ObservedPod(name, ABSENT)
    if pod.reason in ("Rejected", "Untrusted"):
        return pod  # the I/O layer's verdict on our own create call
    expected = entry.uid or p.obs.created.get(name)
    if expected and pod.uid != expected:
        return PodError(
            Reason.UNTRUSTED_POD,
            f"{who} pod {name} was replaced by another pod (uid {pod.uid}, kloop created "
            f"{expected}): its result is not trusted",
        )
    entry.uid = pod.uid or None
    if entry.placed_in:  # the run's list of placed pods outlives the iteration: keep it in step
        for placed in p.status.placed_pods:
            if placed.name == name:
                placed.uid = entry.uid
    return pod


def request_pod(p: Pass, tracked: list[TrackedPod], request: PodRequest) -> None:
    """Ask for a pod, recording in status that kloop is about to create it."""
    if not any(t.name == request.name for t in tracked):
        entry = TrackedPod(name=request.name, requested_at=p.now)
        if request.in_target:
            observed = p.obs.clusters.get(request.cluster)
            entry.placed_in = request.cluster
            entry.namespace = observed.agent_namespace if observed is not None else None
            if not any(t.name == request.name for t in p.status.placed_pods):
                p.status.placed_pods = [*p.status.placed_pods, entry.model_copy()]
        tracked.append(entry)
    p.actions.append(CreatePod(request))
