"""Per-pod times from one pod watch: works for any controller's pods (kloop's, Argo's).

Times are local ``time.monotonic()`` at the moment the watch delivered the event: Kubernetes
timestamps have one-second resolution, far coarser than the overheads measured.

Another controller's pods are measured the same way, e.g. an Argo workflow's steps::

    timeline = PodTimeline(api, namespace, "workflows.argoproj.io/workflow").start()
    ...  # run the workflows
    gaps = step_gaps(timeline.snapshot(), lambda p: p.labels["workflows.argoproj.io/workflow"])
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from e2e.bench.watch import Watcher

Json = dict[str, Any]


@dataclass
class PodTimes:
    """When the watch first saw a pod, its main container terminated, and its phase final."""

    namespace: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    added: float | None = None
    main_terminated: float | None = None
    finished: float | None = None

    @property
    def terminated(self) -> float | None:
        """The earlier of: first container terminated, phase Succeeded/Failed."""
        seen = [t for t in (self.main_terminated, self.finished) if t is not None]
        return min(seen) if seen else None


def record(times: PodTimes, pod: Json, now: float) -> None:
    """Update ``times`` from one observed state of the pod (first sightings only)."""
    if times.added is None:
        times.added = now
    status = pod.get("status") or {}
    if times.finished is None and status.get("phase") in ("Succeeded", "Failed"):
        times.finished = now
    main = main_container(pod)
    if times.main_terminated is None and main:
        for c in status.get("containerStatuses") or []:
            if c.get("name") == main and (c.get("state") or {}).get("terminated"):
                times.main_terminated = now


def main_container(pod: Json) -> str | None:
    """The container doing the step's work: the ``default-container`` annotation, else the first.

    Argo puts its ``wait`` sidecar first and names ``main`` in that annotation.
    """
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    named = annotations.get("kubectl.kubernetes.io/default-container")
    if named:
        return str(named)
    containers = (pod.get("spec") or {}).get("containers") or []
    return str(containers[0].get("name")) if containers else None


class PodTimeline:
    """Watches pods in ``namespace`` (optionally by label selector) and records their times."""

    def __init__(self, api: client.ApiClient, namespace: str, selector: str | None = None):
        self.pods: dict[str, PodTimes] = {}
        self._lock = threading.Lock()
        core = client.CoreV1Api(api)
        kw = {"label_selector": selector} if selector else {}
        self._watcher = Watcher(core.list_namespaced_pod, namespace, on_event=self._event, **kw)

    def _event(self, kind: str, pod: Json, now: float) -> None:
        if kind == "DELETED":
            return
        meta = pod["metadata"]
        with self._lock:
            times = self.pods.get(meta["name"])
            if times is None:
                times = PodTimes(meta["namespace"], meta["name"], dict(meta.get("labels") or {}))
                self.pods[meta["name"]] = times
            record(times, pod, now)

    def start(self) -> PodTimeline:
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._watcher.stop()

    def snapshot(self) -> list[PodTimes]:
        with self._lock:
            return list(self.pods.values())


@dataclass(frozen=True)
class Gap:
    """One step: ``before`` terminated, then ``after`` was created."""

    before: PodTimes
    after: PodTimes
    seconds: float


def step_gaps(
    pods: Iterable[PodTimes],
    group: Callable[[PodTimes], str],
    terminated: Callable[[PodTimes], float | None] = lambda p: p.terminated,
) -> list[Gap]:
    """Per group (a run, a workflow), consecutive pods by creation: next ADDED - prev ended.

    ``terminated`` picks the end time (operator-only mode passes the driver's write time).
    Pods not yet seen ending, or whose successor was created before they ended (parallel
    steps), give no gap.
    """
    groups: dict[str, list[PodTimes]] = {}
    for pod in pods:
        if pod.added is not None:
            groups.setdefault(group(pod), []).append(pod)
    gaps = []
    for members in groups.values():
        members.sort(key=lambda p: p.added or 0.0)
        for before, after in zip(members, members[1:], strict=False):
            end = terminated(before)
            if end is None or after.added is None or after.added < end:
                continue
            gaps.append(Gap(before, after, after.added - end))
    return gaps
