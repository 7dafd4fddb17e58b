"""One target's inner loop: maker, then graders, then a verdict — iterate, pass, pause or fail.

A target is one stage × one cluster. Each has its own iterations, counters and feedback; the
targets of a stage run side by side. This module decides for one target and reports what became
of it in its ``ClusterProgress``; the run (``decide``) reads those to move the stage on, and
halts the whole run when a cap is reached or drift must halt it.
"""

from __future__ import annotations

from kloop.api.conditions import Reason
from kloop.api.loop import DRIFT_GRADER, DriftAction, LoopSpec
from kloop.api.looprun import (
    CheckerRecord,
    IterationDecision,
    IterationRecord,
    MakerRecord,
    Outcome,
    RecordedVerdict,
    TargetState,
)
from kloop.core import names, workspace
from kloop.core.assess import PodError, assess_checker, assess_maker
from kloop.core.context import Pass, Target
from kloop.core.feedback import feedback
from kloop.core.graders import LIVE_PHASES, Grader, PodChecker, build_graders, error_record
from kloop.core.model import DeletePod, ObservedPod, PodRequest, Role
from kloop.core.trust import ABSENT, own_pod, request_pod

PUSH_POLL_SECONDS = 2.0
NO_TIMEOUT = 10**9
"""Judging a pod that has ended needs no timeout: used when the Loop (and its timeouts) is gone."""

HALTING_REASONS = frozenset(
    {
        Reason.MAX_ITERATIONS.value,
        Reason.TOKEN_BUDGET.value,
        Reason.COST_BUDGET.value,
        Reason.DEADLINE.value,
        Reason.DRIFT_EXCEEDED.value,
    }
)
"""A target ended for one of these is Halted (a cap or a bound); for any other reason, Failed."""


def maker_pod_name(p: Pass, stage_index: int, record: IterationRecord) -> str:
    """The maker pod of an iteration."""
    return names.pod_name(p.obs.name, stage_index, record.cluster, record.number, Role.MAKER)


def end_iteration(p: Pass, record: IterationRecord, decision: IterationDecision, why: str) -> None:
    """Close an iteration with its decision; its trust bookkeeping is no longer needed."""
    record.decision = decision
    record.why = why[:2000]
    record.finished_at = p.now
    record.pods = []


def end_target(p: Pass, t: Target, reason: Reason | str, message: str) -> None:
    """The target will not pass: Halted for a cap or bound, Failed otherwise; one Event."""
    value = reason.value if isinstance(reason, Reason) else reason
    t.progress.state = TargetState.HALTED if value in HALTING_REASONS else TargetState.FAILED
    t.progress.reason, t.progress.message = value, message[:512]
    t.progress.finished_at = p.now
    p.event(Reason.CLUSTER_FAILED, f"{t.stage.name}/{t.cluster}: {value}: {message}", True)


# --- collecting what ended -------------------------------------------------------------------


def collect(p: Pass, spec: LoopSpec | None, t: Target) -> None:
    """Record every result of the target's open iteration that is in; create nothing.

    Runs before anything may end the run, so usage, status and memory keep what happened.
    """
    record = t.record
    if record.maker is None:
        name = maker_pod_name(p, t.stage.index, record)
        timeout = spec.maker.timeout_seconds if spec else NO_TIMEOUT
        pod = own_pod(p, record.pods, name, "maker")
        if isinstance(pod, PodError):
            record_maker(p, record, pod, name)
        elif pod.phase != ABSENT:
            outcome = assess_maker(pod, timeout, p.obs.now)
            ok = outcome is not None and outcome.outcome != Outcome.ERROR
            if ok and workspace.push_pending(pod, timeout, p.obs.now):
                p.wake_in.append(PUSH_POLL_SECONDS)  # the sidecar is still pushing
            elif outcome is not None:
                outcome = workspace.settle_maker(record, outcome, pod)
                record_maker(p, record, outcome, name, pod)
    if record.maker is None or record.maker.outcome == Outcome.ERROR:
        return
    recorded = {c.name for c in record.checkers}
    if spec is not None:
        for grader in build_graders(spec, t.stage):
            if grader.name not in recorded:
                _record_verdict(p, t, grader)
        return
    # no Loop any more: judge the checker pods kloop asked for, by name
    prefix = names.checker_pod_prefix(p.obs.name, t.stage.index, record.cluster, record.number)
    for tracked in list(record.pods):
        checker = tracked.name.removeprefix(prefix)
        if tracked.name.startswith(prefix) and checker not in recorded:
            pod = own_pod(p, record.pods, tracked.name, f"checker {checker!r}")
            verdict = (
                error_record(checker, pod)
                if isinstance(pod, PodError)
                else None
                if pod.phase == ABSENT
                else assess_checker(checker, pod, NO_TIMEOUT, p.obs.now)
            )
            if verdict is not None:
                _add_verdict(p, record, verdict)


def _record_verdict(p: Pass, t: Target, grader: Grader) -> None:
    verdict = grader.poll(p, t)
    if verdict is not None:
        _add_verdict(p, t.record, verdict)


def _add_verdict(p: Pass, record: IterationRecord, verdict: CheckerRecord) -> None:
    record.checkers = [*record.checkers, verdict]
    p.status.usage.tokens += verdict.tokens
    p.status.usage.cost_usd = round(p.status.usage.cost_usd + verdict.cost_usd, 6)


def record_maker(
    p: Pass,
    record: IterationRecord,
    result: MakerRecord | PodError,
    name: str,
    pod: ObservedPod | None = None,
) -> None:
    """Record the maker's outcome (or why it has none) with its usage and an Event."""
    if isinstance(result, PodError):
        result = MakerRecord(
            pod=name, outcome=Outcome.ERROR, summary=result.message, error_reason=result.reason
        )
    record.maker = result
    p.status.usage.tokens += result.tokens
    p.status.usage.cost_usd = round(p.status.usage.cost_usd + result.cost_usd, 6)
    where = f"iteration {record.number} ({record.stage}/{record.cluster})"
    if result.outcome == Outcome.ERROR:
        if pod is not None and pod.phase in LIVE_PHASES and not pod.deleting:
            p.actions.append(DeletePod(name, result.summary))
        p.event(
            as_reason(result.error_reason, Reason.MAKER_ERROR), f"{where}: {result.summary}", True
        )
    else:
        p.status.message = f"{where}: maker {result.outcome}, graders running"
        p.event(Reason.ITERATING, f"maker of {where}: {result.outcome}: {result.summary}")
    if record.workspace is not None and record.workspace.note:
        p.event(Reason.NO_NEW_COMMIT, f"{where}: {record.workspace.note}", True)


# --- moving a target on ------------------------------------------------------------------------


def await_maker(p: Pass, spec: LoopSpec, t: Target) -> None:
    """The maker has no result yet: create its pod if needed, or wait for it."""
    record = t.record
    name = maker_pod_name(p, t.stage.index, record)
    pod = p.obs.pods.get(name)
    tracked = any(tp.name == name for tp in record.pods)
    if pod is not None and not tracked:
        message = f"maker pod {name} existed before kloop asked for it: its result is not trusted"
        record_maker(p, record, PodError(Reason.UNTRUSTED_POD, message), name)
        return
    if pod is None:
        checkout = workspace.maker_checkout(
            spec, p.status, p.obs.name, t.stage.name, t.cluster, record.number
        )
        if checkout is not None and record.workspace is None:
            record.workspace = workspace.record_for(checkout)
        request_pod(
            p,
            record.pods,
            PodRequest(
                name,
                Role.MAKER,
                record.number,
                t.stage.name,
                t.cluster,
                files={"feedback.json": feedback(p.status, t.stage.name, t.cluster, record.number)},
                workspace=checkout,
            ),
        )
        p.why = p.why or f"maker of iteration {record.number} ({t.stage.name}/{t.cluster}) created"
        p.wake_in.append(float(spec.maker.timeout_seconds))
        return
    p.why = p.why or f"waiting for maker {name}"
    if pod.created_at is not None:
        elapsed = (p.obs.now - pod.created_at).total_seconds()
        p.wake_in.append(spec.maker.timeout_seconds - elapsed + 1)


def pod_graders_to_start(p: Pass, spec: LoopSpec, t: Target) -> bool:
    """Whether moving this target on would start a grader pod (a budget cap blocks that)."""
    if t.record.maker is None or t.record.maker.outcome == Outcome.ERROR:
        return False
    recorded = {c.name for c in t.record.checkers}
    return any(g.needs_pod(p, t) for g in build_graders(spec, t.stage) if g.name not in recorded)


def retry_errored(p: Pass, spec: LoopSpec, t: Target) -> None:
    """Pod checkers that errored and have retries left run again; their errors are kept aside."""
    graders = {g.name: g for g in build_graders(spec, t.stage)}
    for verdict in [c for c in t.record.checkers if c.verdict == RecordedVerdict.ERROR]:
        grader = graders.get(verdict.name)
        if not isinstance(grader, PodChecker) or not grader.can_retry(t):
            continue
        attempt = grader.attempt(t)
        t.record.checkers = [c for c in t.record.checkers if c is not verdict]
        kept = verdict.model_copy(update={"reasons": [r[:256] for r in verdict.reasons[:1]]})
        t.record.retried = [*t.record.retried, kept]
        p.event(
            Reason.CHECKER_RETRY,
            f"iteration {t.record.number} ({t.stage.name}/{t.cluster}): checker "
            f"{verdict.name!r} errored ({'; '.join(verdict.reasons)[:300]}); attempt "
            f"{attempt + 1} of {grader.checker.retries + 1}",
            warning=True,
        )


def grade(p: Pass, spec: LoopSpec, t: Target) -> bool:
    """Start every grader without a verdict; True once the iteration can be decided.

    An errored grader decides at once: the others are stopped.
    """
    graders = build_graders(spec, t.stage)
    current = {g.name for g in graders}
    t.record.checkers = [c for c in t.record.checkers if c.name in current]  # renamed or removed
    recorded = {c.name for c in t.record.checkers}
    missing = [g for g in graders if g.name not in recorded]
    if not missing:
        return True
    if any(c.verdict == RecordedVerdict.ERROR for c in t.record.checkers):
        for grader in missing:
            grader.stop(p, t)
        return True
    for grader in missing:
        grader.start(p, t)
    p.why = (
        p.why or f"waiting for graders of iteration {t.record.number} ({t.stage.name}/{t.cluster})"
    )
    return False


def verdict(p: Pass, spec: LoopSpec, t: Target) -> IterationDecision | None:
    """Decide the target's iteration from its verdicts (four-way).

    An error fails the target; a failure iterates (or ends the target at its cap); drift beyond
    its bound halts or iterates as the stage says; an inconclusive verdict with nothing failing
    pauses the target for a human; all passing passes it. On ``ITERATE`` the iteration is left
    open (its ``why`` set): the caller halts the run if a cap is reached, or closes it and
    starts the next one.
    """
    record = t.record
    errors = [c for c in record.checkers if c.verdict == RecordedVerdict.ERROR]
    if errors:
        why = f"{errors[0].name!r} errored: {'; '.join(errors[0].reasons)}"
        end_iteration(p, record, IterationDecision.FAIL, why)
        end_target(p, t, as_reason(errors[0].error_reason, Reason.CHECKER_FAILED), why)
        return IterationDecision.FAIL
    failing = [c for c in record.checkers if c.verdict == RecordedVerdict.FAIL]
    inconclusive = [c for c in record.checkers if c.verdict == RecordedVerdict.INCONCLUSIVE]
    combined = (
        RecordedVerdict.FAIL
        if failing
        else RecordedVerdict.INCONCLUSIVE
        if inconclusive
        else RecordedVerdict.PASS
    )
    p.status.last_verdict = combined
    t.progress.last_verdict = combined
    where = f"iteration {record.number} ({t.stage.name}/{t.cluster})"
    drift = next((c for c in failing if c.name == DRIFT_GRADER), None)
    drift_halts = t.stage.drift is not None and t.stage.drift.on_exceeded is DriftAction.HALT
    if drift is not None and drift_halts:
        why = f"drift beyond its bound: {'; '.join(drift.reasons)}"
        end_iteration(p, record, IterationDecision.HALT, why)
        end_target(p, t, Reason.DRIFT_EXCEEDED, why)
        return IterationDecision.HALT
    if failing:
        reasons = "; ".join(f"{c.name}: {', '.join(c.reasons) or c.verdict}" for c in failing)
        p.event(Reason.CHECKS_FAILED, f"{where}: {reasons}")
        if t.progress.iterations >= t.stage.max_iterations:
            why = (
                f"{t.progress.iterations} iteration(s) in {t.stage.name}/{t.cluster} without "
                f"passing (maxIterations={t.stage.max_iterations}); last: {reasons}"
            )
            end_iteration(p, record, IterationDecision.HALT, why)
            end_target(p, t, Reason.MAX_ITERATIONS, why)
            return IterationDecision.HALT
        record.why = f"checks failed: {reasons}"[:2000]  # closed by the caller, after its checks
        return IterationDecision.ITERATE
    if inconclusive:
        reasons = "; ".join(f"{c.name}: {', '.join(c.reasons) or c.verdict}" for c in inconclusive)
        why = (
            f"inconclusive: {reasons}; a human decides: annotate kloop.dev/resume={record.number} "
            "to go on as passed, or kloop.dev/abort to stop"
        )
        end_iteration(p, record, IterationDecision.PAUSE, why)
        t.progress.state = TargetState.PAUSED
        t.progress.message = why[:512]
        p.event(Reason.INCONCLUSIVE, f"{where}: {why}", warning=True)
        return IterationDecision.PAUSE
    end_iteration(p, record, IterationDecision.SUCCEED, "every grader passed")
    t.progress.state = TargetState.PASSED
    t.progress.finished_at = p.now
    p.event(Reason.CHECKS_PASSED, f"{where}: every grader passed")
    return IterationDecision.SUCCEED


def as_reason(value: str | None, default: Reason) -> Reason:
    """A recorded reason as the enum; unknown values (an older or newer status) fall back."""
    try:
        return Reason(value) if value else default
    except ValueError:
        return default
