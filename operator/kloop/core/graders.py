"""Grader providers: every way a target's work is judged, behind one shape (start, poll, stop).

A pod checker runs a pod; an HTTP oracle is a query the I/O layer makes; drift is measured by the
operator in the target cluster. Each is asked to start (idempotent: names are deterministic and
the I/O layer deduplicates queries), polled for its verdict, which the core records in status,
and stopped when the run ends early. New graders (MCP pre-flight, LLM judges) plug in here.
"""

from __future__ import annotations

from typing import Protocol

from kloop.api.conditions import Reason
from kloop.api.loop import DRIFT_GRADER, Checker, CheckerKind, Drift, LoopSpec, Placement
from kloop.api.looprun import CheckerRecord, RecordedVerdict
from kloop.core import names, workspace
from kloop.core.assess import PodError, assess_checker
from kloop.core.context import Pass, Target
from kloop.core.feedback import feedback, maker_json
from kloop.core.model import (
    LOCAL_CLUSTER,
    DeletePod,
    EvaluateOracle,
    MeasureDrift,
    PodRequest,
    Role,
)
from kloop.core.plan import StagePlan
from kloop.core.trust import ABSENT, own_pod, request_pod

LIVE_PHASES = ("Pending", "Running", "Unknown")
"""Phases of a pod to delete when it is no longer wanted (Unknown: its node or cluster is not
answering; it may still run)."""
REMOTE_POLL_SECONDS = 3.0
DRIFT_DETAILS_KEPT = 5
"""Per target in status: 64 targets of a stage must stay small (the verdict has more)."""


class Grader(Protocol):
    """One way of judging a target's iteration."""

    name: str

    def needs_pod(self, p: Pass, t: Target) -> bool:
        """Whether starting it now would create a pod (no pod starts while a cap is reached)."""

    def start(self, p: Pass, t: Target) -> None:
        """Ask for a verdict; safe to repeat."""

    def poll(self, p: Pass, t: Target) -> CheckerRecord | None:
        """The verdict once there is one."""

    def stop(self, p: Pass, t: Target) -> None:
        """Stop whatever still runs for it."""


class PodChecker:
    """A checker pod: another image, command or args than the maker."""

    def __init__(self, checker: Checker) -> None:
        self.checker = checker
        self.name = checker.name

    def attempt(self, t: Target) -> int:
        """Which run of this checker in the iteration: 1, then one more per errored retry."""
        return 1 + sum(r.name == self.name for r in t.record.retried)

    def can_retry(self, t: Target) -> bool:
        """Whether an error of the current attempt is run again rather than decided on."""
        return self.attempt(t) <= self.checker.retries

    def pod_name(self, p: Pass, t: Target) -> str:
        """The checker pod of this target's iteration (``-a<n>`` from the second attempt)."""
        name = names.pod_name(
            p.obs.name, t.stage.index, t.cluster, t.record.number, Role.CHECKER, self.name
        )
        attempt = self.attempt(t)
        if attempt > 1:
            name = f"{name}-a{attempt}"
        if self.placed_in_target(t):  # many runs share the agent namespace there: make it unique
            name = f"{name}-{p.obs.uid[:8]}"
        return name

    def placed_in_target(self, t: Target) -> bool:
        """Whether its pod runs inside the target cluster rather than in the run's namespace."""
        return self.checker.placement is Placement.TARGET and t.cluster != LOCAL_CLUSTER

    def needs_pod(self, p: Pass, t: Target) -> bool:
        """True until kloop has asked for the pod."""
        return not any(tp.name == self.pod_name(p, t) for tp in t.record.pods)

    def start(self, p: Pass, t: Target) -> None:
        """Create the pod, unless it exists."""
        name = self.pod_name(p, t)
        if any(tp.name == name for tp in t.record.pods) and name in p.obs.pods:
            return
        request_pod(
            p,
            t.record.pods,
            PodRequest(
                name,
                Role.CHECKER,
                t.record.number,
                t.stage.name,
                t.cluster,
                checker=self.name,
                in_target=self.placed_in_target(t),
                workspace=(
                    workspace.checker_checkout(p.obs.loop.spec, t.record)
                    if p.obs.loop.spec is not None
                    else None
                ),
                files={
                    "maker.json": maker_json(p.obs, t.record),
                    "feedback.json": feedback(p.status, t.stage.name, t.cluster, t.record.number),
                },
            ),
        )
        p.wake_in.append(float(self.checker.timeout_seconds))

    def poll(self, p: Pass, t: Target) -> CheckerRecord | None:
        """The pod's verdict once it ended (or why it has none)."""
        name = self.pod_name(p, t)
        pod = own_pod(p, t.record.pods, name, f"checker {self.name!r}")
        if isinstance(pod, PodError):
            return error_record(self.name, pod)
        if pod.phase == ABSENT:
            return None
        timeout = self.checker.timeout_seconds
        verdict = assess_checker(self.name, pod, timeout, p.obs.now)
        if verdict is None and any(tp.placed_in for tp in t.record.pods if tp.name == name):
            p.wake_in.append(REMOTE_POLL_SECONDS)  # no watch on a target's pods: poll them
        if verdict is None:
            if pod.created_at is not None:
                p.wake_in.append(timeout - (p.obs.now - pod.created_at).total_seconds() + 1)
            return None
        live = pod.phase in LIVE_PHASES and not pod.deleting
        if verdict.verdict == RecordedVerdict.ERROR and live:
            p.actions.append(DeletePod(name, verdict.reasons[0]))
        return verdict

    def stop(self, p: Pass, t: Target) -> None:
        """Delete the pod if it still runs."""
        name = self.pod_name(p, t)
        pod = p.obs.pods.get(name)
        if pod is not None and pod.phase in LIVE_PHASES and not pod.deleting:
            p.actions.append(DeletePod(name, "grading stopped"))


class HttpOracle:
    """An HTTP query the I/O layer makes through its egress guard."""

    def __init__(self, checker: Checker) -> None:
        self.checker = checker
        self.name = checker.name

    def needs_pod(self, p: Pass, t: Target) -> bool:
        """Never: the operator asks."""
        return False

    def start(self, p: Pass, t: Target) -> None:
        """Ask the I/O layer for the answer (it runs one query per iteration)."""
        if (t.record.number, self.name) not in p.obs.oracles:
            p.actions.append(EvaluateOracle(t.record.number, self.name))

    def poll(self, p: Pass, t: Target) -> CheckerRecord | None:
        """The oracle's verdict once answered."""
        outcome = p.obs.oracles.get((t.record.number, self.name))
        if outcome is None:
            return None
        return CheckerRecord(
            name=self.name,
            verdict=outcome.verdict,
            reasons=outcome.reasons,
            error_reason=outcome.error_reason,
        )

    def stop(self, p: Pass, t: Target) -> None:
        """Nothing runs in the cluster; the I/O layer cancels its query when the run ends."""


class DriftCheck:
    """Drift of the stage's desired objects in the target, measured by the operator."""

    name = DRIFT_GRADER

    def __init__(self, drift: Drift) -> None:
        self.drift = drift

    def needs_pod(self, p: Pass, t: Target) -> bool:
        """Never: the operator measures."""
        return False

    def start(self, p: Pass, t: Target) -> None:
        """Ask the I/O layer to measure (once per iteration and cluster)."""
        if (t.record.number, t.cluster) not in p.obs.drift:
            p.actions.append(MeasureDrift(t.record.number, t.stage.name, t.cluster))

    def poll(self, p: Pass, t: Target) -> CheckerRecord | None:
        """Pass within maxDriftedObjects, fail beyond it (the drifted objects as reasons)."""
        outcome = p.obs.drift.get((t.record.number, t.cluster))
        if outcome is None:
            return None
        if outcome.error is not None:
            return CheckerRecord(
                name=self.name,
                verdict=RecordedVerdict.ERROR,
                reasons=[f"drift could not be measured in {t.cluster}: {outcome.error}"[:1024]],
                error_reason=Reason.DRIFT_UNMEASURABLE.value,
            )
        t.progress.drifted_objects = outcome.objects
        t.progress.drift_details = [d[:200] for d in outcome.details[:DRIFT_DETAILS_KEPT]]
        bound = self.drift.max_drifted_objects
        summary = f"{outcome.objects} drifted object(s) in {t.cluster} (maxDriftedObjects={bound})"
        ok = outcome.objects <= bound
        return CheckerRecord(
            name=self.name,
            verdict=RecordedVerdict.PASS if ok else RecordedVerdict.FAIL,
            reasons=[summary, *[d[:1024] for d in outcome.details[:19]]],
        )

    def stop(self, p: Pass, t: Target) -> None:
        """Nothing runs in the cluster."""


def error_record(name: str, error: PodError) -> CheckerRecord:
    """A grader that has no verdict because of an error (lost, untrusted, failed pod)."""
    return CheckerRecord(
        name=name, verdict=RecordedVerdict.ERROR, reasons=[error.message], error_reason=error.reason
    )


def build_graders(spec: LoopSpec, stage: StagePlan) -> list[Grader]:
    """The graders of a stage's iterations: the Loop's checkers, then drift if the stage has it."""
    graders: list[Grader] = [
        HttpOracle(c) if c.kind is CheckerKind.HTTP else PodChecker(c) for c in spec.checkers
    ]
    if stage.drift is not None:
        graders.append(DriftCheck(stage.drift))
    return graders
