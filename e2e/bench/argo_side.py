"""Argo Workflows v4.0.5 on the same cluster, same workload, same probes: the reference.

The greeting loop as Argo's recursive steps workflow (``e2e/argo/workflow.py``), run one after
the other in a fresh namespace under a workflow-controller host process (``e2e/argo``), at
Argo's default requeue and at 1 s. Steps are timed by the same pod watch as kloop's real-pods
mode (``PodTimeline``): a workflow's pods in creation order, previous pod ended → next pod
created. The controller's CPU and RSS come from /proc like the operator's; its API requests
from its own ``argo_workflows_k8s_request_total``.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from e2e.argo.controller import ArgoController
from e2e.argo.workflow import greeting_workflow, submit, wait_finished
from e2e.bench.operator_only import scrape
from e2e.bench.procstat import Memory, cpu_seconds, memory
from e2e.bench.promtext import Tally, delta
from e2e.bench.timeline import PodTimeline, PodTimes, step_gaps

WORKFLOW_LABEL = "workflows.argoproj.io/workflow"
ITERATIONS = 3
"""Maker + checker rounds of the greeting workload (the checker passes on try 3)."""
WORKFLOW_TIMEOUT = 240.0


@dataclass
class ArgoResult:
    """One requeue setting: per-workflow and per-step samples, controller cost."""

    label: str
    runs: int
    finished: int = 0
    run_seconds: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)  # first container seen terminated → next
    steps_phase: list[float] = field(default_factory=list)  # phase seen final → next pod
    apply_to_first_pod: list[float] = field(default_factory=list)
    pods: int = 0
    containers: int = 0
    cpu_seconds: float = 0.0
    memory: Memory | None = None
    requests: Tally = field(default_factory=Counter)

    @property
    def iterations(self) -> int:
        return ITERATIONS * self.finished


def argo_requests(text: str) -> Tally:
    """``argo_workflows_k8s_request_total`` by (verb, kind), as Argo labels them."""
    tally: Tally = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "argo_workflows_k8s_request":
            for s in family.samples:
                kind = s.labels.get("kind", "?")
                # leader election renews its Lease every few seconds whatever it does: time-based
                # traffic kloop (standalone) does not have, left out of a per-iteration figure
                if s.name.endswith("_total") and kind.lower() not in ("lease", "leases"):
                    tally[s.labels.get("verb", "?").lower(), kind] += int(s.value)
    return tally


def bench_argo(kubeconfig: Path, runs: int, requeue: float | None, logs: Path) -> ArgoResult:
    """``runs`` greeting workflows one after the other under one controller."""
    label = "Argo, default requeue" if requeue is None else f"Argo, requeue {requeue:g} s"
    result = ArgoResult(label, runs)
    namespace = f"argo-bench-{uuid.uuid4().hex[:6]}"
    log_path = logs / f"argo-{'default' if requeue is None else requeue}.log"
    with ArgoController(namespace, requeue, kubeconfig, log_path) as argo:
        timeline = PodTimeline(argo.api, namespace, WORKFLOW_LABEL).start()
        url = f"http://127.0.0.1:{argo.metrics_port}/metrics"
        created: dict[str, float] = {}
        try:
            time.sleep(2.0)
            cpu0 = cpu_seconds(argo.pid)
            requests0 = argo_requests(scrape(url))
            for i in range(runs):
                name = f"greeting-{i}"
                created[name] = time.monotonic()
                submit(namespace, greeting_workflow(name), api=argo.api)
                wf = wait_finished(namespace, name, WORKFLOW_TIMEOUT, api=argo.api)
                result.run_seconds.append(time.monotonic() - created[name])
                if (wf.get("status") or {}).get("phase") == "Succeeded":
                    result.finished += 1
                print(f"  {label}: workflow {i + 1}/{runs} {wf['status'].get('phase')}", flush=True)
            time.sleep(1.0)
            result.cpu_seconds = cpu_seconds(argo.pid) - cpu0
            result.memory = memory(argo.pid)
            result.requests = delta(argo_requests(scrape(url)), requests0)
        finally:
            timeline.stop()
        pods = timeline.snapshot()
        result.pods = len(pods)
        result.containers = _count_containers(argo, namespace)  # before the namespace goes

    def group(pod: PodTimes) -> str:
        return pod.labels.get(WORKFLOW_LABEL, "")

    result.steps = [g.seconds for g in step_gaps(pods, group)]
    result.steps_phase = [g.seconds for g in step_gaps(pods, group, lambda p: p.finished)]
    first: dict[str, float] = {}
    for pod in pods:
        if pod.added is not None:
            first[group(pod)] = min(first.get(group(pod), pod.added), pod.added)
    result.apply_to_first_pod = [first[n] - t for n, t in created.items() if n in first]
    return result


def _count_containers(argo: ArgoController, namespace: str) -> int:
    """Containers of the workflows' pods (init + main + sidecars), as the apiserver has them."""
    listed = client.CoreV1Api(argo.api).list_namespaced_pod(
        namespace, label_selector=WORKFLOW_LABEL
    )
    return sum(
        len(p.spec.init_containers or []) + len(p.spec.containers or []) for p in listed.items
    )
