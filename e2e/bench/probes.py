"""From pod and run times to the probes: step overheads, verdict latency, apply → first pod."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from e2e.bench.runs import RunTimes
from e2e.bench.timeline import PodTimes, step_gaps

RUN_LABEL = "kloop.dev/run"
ROLE_LABEL = "kloop.dev/role"
ITERATION_LABEL = "kloop.dev/iteration"


@dataclass
class Probes:
    """Samples in seconds; each list is one row of the report."""

    maker_to_checker: list[float] = field(default_factory=list)
    checker_to_verdict: list[float] = field(default_factory=list)
    checker_to_next: list[float] = field(default_factory=list)
    apply_to_first_pod: list[float] = field(default_factory=list)
    run_seconds: list[float] = field(default_factory=list)


def kloop_probes(
    pods: list[PodTimes],
    runs: dict[str, RunTimes],
    terminated: Callable[[PodTimes], float | None] = lambda p: p.terminated,
) -> Probes:
    """The probes of kloop runs (pods grouped by ``kloop.dev/run``)."""
    out = Probes()
    for gap in step_gaps(pods, lambda p: p.labels.get(RUN_LABEL, ""), terminated):
        role = gap.before.labels.get(ROLE_LABEL)
        if role == "maker":
            out.maker_to_checker.append(gap.seconds)
        elif role == "checker":
            out.checker_to_next.append(gap.seconds)
            run = runs.get(gap.before.labels.get(RUN_LABEL, ""))
            end = terminated(gap.before)
            decided = (
                run.decided.get(int(gap.before.labels.get(ITERATION_LABEL, "0"))) if run else None
            )
            if decided is not None and end is not None:
                out.checker_to_verdict.append(decided - end)
    first: dict[str, float] = {}
    for pod in pods:
        name = pod.labels.get(RUN_LABEL, "")
        if pod.added is not None:
            first[name] = min(first.get(name, pod.added), pod.added)
    for name, run in runs.items():
        if run.created is not None and name in first:
            out.apply_to_first_pod.append(first[name] - run.created)
        if run.created is not None and run.finished is not None:
            out.run_seconds.append(run.finished - run.created)
    return out
