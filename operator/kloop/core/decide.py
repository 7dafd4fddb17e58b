"""The decision function: one observed LoopRun (and the time) in, the next status and actions out.

Reconcile is an ordered list of small steps over a ``_Pass`` that gathers what the steps decide.
Only the summarize step (``conditions.summarize``) sets conditions. Everything here is pure: no
clock, no client, no I/O; ``obs.now`` is the time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime

from kloop.api.conditions import Reason
from kloop.api.loop import Checker, CheckerKind, LoopSpec
from kloop.api.looprun import (
    CheckerRecord,
    ClusterProgress,
    IterationRecord,
    LoopRunStatus,
    Phase,
    StageProgress,
    TeardownProgress,
)
from kloop.core import names
from kloop.core.assess import ERROR, assess_checker, assess_maker, pod_error
from kloop.core.conditions import summarize
from kloop.core.history import bound_status
from kloop.core.memory import memory_entry
from kloop.core.model import (
    LOCAL_CLUSTER,
    Action,
    AppendMemory,
    CreatePod,
    Decision,
    DeletePod,
    EvaluateOracle,
    ObservedRun,
    PodRequest,
    RecordEvent,
    Role,
    run_is_over,
)
from kloop.core.plan import Limits, StagePlan, build_plan, compute_limits

RESYNC_SECONDS = 30.0
LOOP_MISSING_RETRY_SECONDS = 15.0


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


@dataclass
class _Pass:
    """What one reconcile pass has decided so far."""

    obs: ObservedRun
    status: LoopRunStatus
    actions: list[Action] = field(default_factory=list)
    wake_in: list[float] = field(default_factory=list)
    why: str = ""
    stall_reason: Reason | None = None

    def event(self, reason: Reason, message: str, warning: bool = False) -> None:
        self.actions.append(RecordEvent("Warning" if warning else "Normal", reason.value, message))


def decide(obs: ObservedRun) -> Decision:
    """Decide what happens next to a LoopRun."""
    p = _Pass(obs, obs.status.model_copy(deep=True))
    spec = obs.loop.spec
    if p.status.phase is not None and p.status.phase.finished:
        _teardown_step(p, spec)
    elif spec is None:
        _loop_unavailable_step(p)
    else:
        _run_steps(p, spec)
    keep = spec.status_iterations if spec is not None else None
    bound_status(p.status, keep, p.obs.memory_iterations)  # before memory: entries are bounded too
    _memory_step(p)
    p.status.observed_generation = obs.generation
    summarize(p.status, obs.generation, obs.now, p.stall_reason)
    started = _parse_time(p.status.started_at)
    if started is not None and p.status != obs.status:
        # only when something else changed: an idle reconcile must not write status
        end = _parse_time(p.status.finished_at) or obs.now
        p.status.usage.wall_seconds = round((end - started).total_seconds(), 1)
    requeue = None if run_is_over(p.status) else min([RESYNC_SECONDS, *p.wake_in])
    return Decision(p.status, p.actions, requeue, p.why or (p.status.message or ""))


# --- steps -----------------------------------------------------------------------------------


def _loop_unavailable_step(p: _Pass) -> None:
    """No usable Loop: wait for it before the run starts; halt a run that had started."""
    reason = Reason.LOOP_NOT_FOUND if p.obs.loop.uid is None else Reason.INVALID_LOOP
    problem = p.obs.loop.problem or f"Loop {p.obs.loop.name!r} not found"
    if p.status.phase in (Phase.RUNNING, Phase.AWAITING_APPROVAL):
        message = f"{problem}: the Loop went away or changed under a started run"
        if p.status.iterations and p.status.iterations[-1].decision is None:
            _end_iteration(p, p.status.iterations[-1], "halt", message)
        _finish(p, None, Phase.HALTED, reason, message)
        return
    if p.status.message != problem:
        p.event(reason, problem, warning=True)
    p.status.phase = p.status.phase or Phase.PENDING
    p.status.message = problem
    p.stall_reason = reason
    p.why = problem
    p.wake_in.append(LOOP_MISSING_RETRY_SECONDS)


def _run_steps(p: _Pass, spec: LoopSpec) -> None:
    if p.obs.memory_conflict is not None:
        if p.status.iterations and p.status.iterations[-1].decision is None:
            _end_iteration(p, p.status.iterations[-1], "fail", p.obs.memory_conflict)
        _finish(p, spec, Phase.FAILED, Reason.MEMORY_CONFLICT, p.obs.memory_conflict)
        return
    limits = compute_limits(spec, p.obs.spec.budget)
    plan = build_plan(spec, limits, {LOCAL_CLUSTER: {}, **p.obs.clusters})
    if p.status.phase in (None, Phase.PENDING) or not p.status.iterations:
        _start(p, plan)
        if not _is_running(p.status):
            return
    if p.obs.aborted_by is not None:
        _finish(p, spec, Phase.HALTED, Reason.ABORTED, f"aborted by {p.obs.aborted_by}")
        return
    if _deadline_passed(p, spec, limits):
        return
    pinned = _pinned_plan(p, spec, plan)
    if pinned is None:
        return
    plan = pinned
    if p.status.phase is Phase.AWAITING_APPROVAL:
        _approval_step(p, plan)
        if not _is_running(p.status):
            return
    record = p.status.iterations[-1]
    stage = _stage_plan(plan, record.stage)
    maker_was_pending = record.maker is None
    if maker_was_pending and not _maker_step(p, spec, stage, record):
        return
    assert record.maker is not None
    if record.maker.outcome == ERROR:
        _end_iteration(p, record, "fail", record.maker.summary)
        reason = _reason(record.maker.error_reason, Reason.MAKER_ERROR)
        _finish(p, spec, Phase.FAILED, reason, record.maker.summary)
        return
    # over budget after the maker: halt before grading; checkers' own spend is judged at the end
    if maker_was_pending and _budget_exhausted(p, spec, limits, record, at_cap=False):
        return
    if not _checkers_step(p, spec, stage, record):
        return
    _verdict_step(p, spec, limits, plan, stage, record)


def _not_yet_supported(spec: LoopSpec | None, plan: list[StagePlan]) -> list[str]:
    """Fields the API accepts that this version does not act on: said aloud, not ignored."""
    if spec is None:
        return []
    inert = [
        name
        for name, value in (
            ("workspace", spec.workspace),
            ("connectors", spec.connectors),
            ("notify", spec.notify),
            ("schedule", spec.schedule),
        )
        if value
    ]
    if any(st.drift for st in spec.stages or []):
        inert.append("stages[].drift")
    remote = sorted({c for st in plan for c in st.clusters if c != LOCAL_CLUSTER})
    if remote:
        inert.append(f"target-cluster credentials (pods for {', '.join(remote)} run here)")
    return inert


def _pinned_plan(p: _Pass, spec: LoopSpec, plan: list[StagePlan]) -> list[StagePlan] | None:
    """The plan as the run started it; None (and the run halted) when its stages changed.

    Clusters are fixed at start: a new or relabelled cluster Secret does not move a running
    rollout. Renamed, added or removed stages halt the run.
    """
    recorded = p.status.stages
    if [st.name for st in plan] == [st.name for st in recorded]:
        return [
            replace(st, clusters=tuple(c.name for c in progress.clusters))
            for st, progress in zip(plan, recorded, strict=True)
        ]
    message = (
        "the Loop's stages changed during the run (run started with "
        f"{[st.name for st in recorded]}, Loop now has {[st.name for st in plan]}); "
        "start a new run"
    )
    if p.status.iterations and p.status.iterations[-1].decision is None:
        _end_iteration(p, p.status.iterations[-1], "halt", message)
    _finish(p, spec, Phase.HALTED, Reason.LOOP_CHANGED, message)
    return None


def _start(p: _Pass, plan: list[StagePlan]) -> None:
    s = p.status
    s.started_at = s.started_at or _iso(p.obs.now)
    s.stages = [
        StageProgress(
            name=st.name,
            state="Pending",
            clusters=[ClusterProgress(name=c, state="Pending") for c in st.clusters],
        )
        for st in plan
    ]
    empty = [st.name for st in plan if not st.clusters]
    if empty:
        message = f"stage {empty[0]!r} selects no cluster"
        s.phase = Phase.FAILED
        s.halt_reason = Reason.INVALID_LOOP.value
        s.message = message
        s.finished_at = _iso(p.obs.now)
        p.event(Reason.INVALID_LOOP, message, warning=True)
        return
    p.event(Reason.ITERATING, f"run started: {len(plan)} stage(s)")
    inert = _not_yet_supported(p.obs.loop.spec, plan)
    if inert:
        p.event(
            Reason.NOT_IMPLEMENTED,
            f"accepted but not acted on yet: {', '.join(inert)}",
            warning=True,
        )
    _enter_stage(p, plan[0])


def _enter_stage(p: _Pass, stage: StagePlan) -> None:
    s = p.status
    s.stage = stage.name
    progress = s.stages[stage.index]
    if stage.require_approval and progress.approved_by is None:
        approver = p.obs.approvals.get(stage.name)
        if approver is None:
            s.phase = Phase.AWAITING_APPROVAL
            progress.state = "AwaitingApproval"
            s.message = (
                f"stage {stage.name!r} awaits approval (annotate kloop.dev/approve={stage.name})"
            )
            p.why = s.message
            p.event(Reason.AWAITING_APPROVAL, s.message)
            return
        progress.approved_by, progress.approved_at = approver, _iso(p.obs.now)
        p.event(Reason.APPROVED, f"stage {stage.name!r} approved by {approver}")
    s.phase = Phase.RUNNING
    progress.state = "Running"
    _begin_iteration(p, stage, stage.clusters[0])


def _approval_step(p: _Pass, plan: list[StagePlan]) -> None:
    stage = _stage_plan(plan, p.status.stage or plan[0].name)
    if stage.name in p.obs.approvals:
        _enter_stage(p, stage)


def _begin_iteration(p: _Pass, stage: StagePlan, cluster: str) -> None:
    s = p.status
    s.iteration += 1
    record = IterationRecord(
        number=s.iteration, stage=stage.name, cluster=cluster, started_at=_iso(p.obs.now)
    )
    s.iterations = [*s.iterations, record]  # bound_status folds the oldest
    progress = _cluster_progress(s, stage, cluster)
    progress.state = "Running"
    progress.iterations += 1
    s.message = f"iteration {record.number} started (stage {stage.name}, cluster {cluster})"
    p.event(Reason.ITERATING, s.message)


def _deadline_passed(p: _Pass, spec: LoopSpec, limits: Limits) -> bool:
    started = _parse_time(p.status.started_at)
    if limits.deadline_seconds is None or started is None:
        return False
    elapsed = (p.obs.now - started).total_seconds()
    if elapsed < limits.deadline_seconds:
        p.wake_in.append(limits.deadline_seconds - elapsed)
        return False
    message = f"run exceeded deadlineSeconds={limits.deadline_seconds}"
    if p.status.iterations and p.status.iterations[-1].decision is None:
        _end_iteration(p, p.status.iterations[-1], "halt", message)
    _finish(p, spec, Phase.HALTED, Reason.DEADLINE, message)
    return True


def _maker_step(p: _Pass, spec: LoopSpec, stage: StagePlan, record: IterationRecord) -> bool:
    """Ensure the maker pod exists; record its outcome once it ended. True when recorded."""
    name = names.pod_name(p.obs.name, stage.index, record.cluster, record.number, Role.MAKER)
    pod = p.obs.pods.get(name)
    if pod is None:
        p.actions.append(
            CreatePod(
                PodRequest(
                    name,
                    Role.MAKER,
                    record.number,
                    stage.name,
                    record.cluster,
                    files={"feedback.json": _feedback(p.status, record.number)},
                )
            )
        )
        p.why = f"maker of iteration {record.number} created"
        p.wake_in.append(float(spec.maker.timeout_seconds))
        return False
    outcome = assess_maker(pod, spec.maker.timeout_seconds, p.obs.now)
    if outcome is None:
        p.why = f"waiting for maker {name}"
        if pod.created_at is not None:
            p.wake_in.append(
                spec.maker.timeout_seconds - (p.obs.now - pod.created_at).total_seconds() + 1
            )
        return False
    record.maker = outcome
    p.status.usage.tokens += outcome.tokens
    p.status.usage.cost_usd = round(p.status.usage.cost_usd + outcome.cost_usd, 6)
    if outcome.outcome == ERROR:
        if pod.phase in ("Pending", "Running"):
            p.actions.append(DeletePod(name, outcome.summary))
        p.event(_reason(outcome.error_reason, Reason.MAKER_ERROR), outcome.summary, True)
    else:
        p.status.message = f"iteration {record.number}: maker {outcome.outcome}, checkers running"
        p.event(
            Reason.ITERATING,
            f"maker of iteration {record.number}: {outcome.outcome}: {outcome.summary}"[:1000],
        )
    return True


def _budget_exhausted(
    p: _Pass, spec: LoopSpec, limits: Limits, record: IterationRecord, *, at_cap: bool
) -> bool:
    """Halt on a spent budget: over it (before grading), or at it (before another iteration)."""
    usage = p.status.usage

    def spent(used: float, cap: float | None) -> bool:
        return cap is not None and (used >= cap if at_cap else used > cap)

    if spent(usage.tokens, limits.max_tokens):
        reason, message = (
            Reason.TOKEN_BUDGET,
            f"agents used {usage.tokens} tokens; maxTokens={limits.max_tokens}",
        )
    elif spent(usage.cost_usd, limits.max_cost_usd):
        reason, message = (
            Reason.COST_BUDGET,
            f"agents cost ${usage.cost_usd:.2f}; maxCostUSD={limits.max_cost_usd}",
        )
    else:
        return False
    _end_iteration(p, record, "halt", message)
    _finish(p, spec, Phase.HALTED, reason, message)
    return True


def _checkers_step(p: _Pass, spec: LoopSpec, stage: StagePlan, record: IterationRecord) -> bool:
    """Ensure every checker ran for this iteration; True once all have a verdict."""
    current = {c.name for c in spec.checkers}
    record.checkers = [c for c in record.checkers if c.name in current]  # renamed or removed
    recorded = {c.name for c in record.checkers}
    pending = False
    for checker in spec.checkers:
        if checker.name in recorded:
            continue
        verdict = _check(p, stage, record, checker)
        if verdict is None:
            pending = True
            continue
        record.checkers = [*record.checkers, verdict]
        p.status.usage.tokens += verdict.tokens
        p.status.usage.cost_usd = round(p.status.usage.cost_usd + verdict.cost_usd, 6)
    if pending:
        p.why = p.why or f"waiting for checkers of iteration {record.number}"
    return not pending


def _check(
    p: _Pass, stage: StagePlan, record: IterationRecord, checker: Checker
) -> CheckerRecord | None:
    if checker.kind is CheckerKind.HTTP:
        outcome = p.obs.oracles.get((record.number, checker.name))
        if outcome is None:
            p.actions.append(EvaluateOracle(record.number, checker.name))
            return None
        return CheckerRecord(name=checker.name, verdict=outcome.verdict, reasons=outcome.reasons)
    name = names.pod_name(
        p.obs.name, stage.index, record.cluster, record.number, Role.CHECKER, checker.name
    )
    pod = p.obs.pods.get(name)
    if pod is None:
        maker_pod = p.obs.pods.get(record.maker.pod or "") if record.maker else None
        maker_json = (maker_pod.message if maker_pod else None) or json.dumps(
            {
                "outcome": record.maker.outcome if record.maker else None,
                "summary": record.maker.summary if record.maker else "",
            }
        )
        p.actions.append(
            CreatePod(
                PodRequest(
                    name,
                    Role.CHECKER,
                    record.number,
                    stage.name,
                    record.cluster,
                    checker=checker.name,
                    files={
                        "maker.json": maker_json,
                        "feedback.json": _feedback(p.status, record.number),
                    },
                )
            )
        )
        p.wake_in.append(float(checker.timeout_seconds))
        return None
    verdict = assess_checker(checker.name, pod, checker.timeout_seconds, p.obs.now)
    if verdict is None:
        if pod.created_at is not None:
            p.wake_in.append(
                checker.timeout_seconds - (p.obs.now - pod.created_at).total_seconds() + 1
            )
        return None
    if verdict.verdict == ERROR and pod.phase in ("Pending", "Running"):
        p.actions.append(DeletePod(name, verdict.reasons[0]))
    return verdict


def _verdict_step(
    p: _Pass,
    spec: LoopSpec,
    limits: Limits,
    plan: list[StagePlan],
    stage: StagePlan,
    record: IterationRecord,
) -> None:
    errors = [c for c in record.checkers if c.verdict == ERROR]
    if errors:
        why = f"checker {errors[0].name!r} errored: {'; '.join(errors[0].reasons)}"
        _end_iteration(p, record, "fail", why)
        _finish(p, spec, Phase.FAILED, _reason(errors[0].error_reason, Reason.CHECKER_FAILED), why)
        return
    failing = [c for c in record.checkers if c.verdict != "pass"]
    p.status.last_verdict = "fail" if failing else "pass"
    progress = _cluster_progress(p.status, stage, record.cluster)
    progress.last_verdict = p.status.last_verdict
    if not failing:
        _end_iteration(p, record, "succeed", "every checker passed")
        p.event(Reason.CHECKS_PASSED, f"iteration {record.number}: every checker passed")
        progress.state = "Passed"
        _advance(p, spec, plan, stage, record.cluster)
        return
    reasons = "; ".join(f"{c.name}: {', '.join(c.reasons) or c.verdict}" for c in failing)
    p.event(Reason.CHECKS_FAILED, f"iteration {record.number}: {reasons}"[:1000])
    if _budget_exhausted(p, spec, limits, record, at_cap=True):
        return
    if progress.iterations >= stage.max_iterations:
        message = (
            f"{progress.iterations} iteration(s) in stage {stage.name!r} without passing "
            f"(maxIterations={stage.max_iterations}); last: {reasons}"
        )
        _end_iteration(p, record, "halt", message)
        progress.state = "Halted"
        _finish(p, spec, Phase.HALTED, Reason.MAX_ITERATIONS, message)
        return
    _end_iteration(p, record, "iterate", f"checks failed: {reasons}")
    _begin_iteration(p, stage, record.cluster)
    _maker_step(p, spec, stage, p.status.iterations[-1])


def _advance(
    p: _Pass, spec: LoopSpec, plan: list[StagePlan], stage: StagePlan, cluster: str
) -> None:
    position = stage.clusters.index(cluster)
    if position + 1 < len(stage.clusters):
        _begin_iteration(p, stage, stage.clusters[position + 1])
        _maker_step(p, spec, stage, p.status.iterations[-1])
        return
    p.status.stages[stage.index].state = "Passed"
    if stage.index + 1 < len(plan):
        _enter_stage(p, plan[stage.index + 1])
        if p.status.phase is Phase.RUNNING:
            _maker_step(p, spec, plan[stage.index + 1], p.status.iterations[-1])
        return
    _finish(p, spec, Phase.SUCCEEDED, Reason.SUCCEEDED, "every stage passed")


def _end_iteration(p: _Pass, record: IterationRecord, decision: str, why: str) -> None:
    record.decision = decision
    record.why = why[:2000]
    record.finished_at = _iso(p.obs.now)


def _finish(p: _Pass, spec: LoopSpec | None, phase: Phase, reason: Reason, message: str) -> None:
    s = p.status
    s.phase = phase
    s.halt_reason = None if phase is Phase.SUCCEEDED else reason.value
    s.message = message
    p.why = message
    p.event(
        reason, f"run {phase.value.lower()}: {message}"[:1000], warning=phase is not Phase.SUCCEEDED
    )
    for stage in s.stages:
        if stage.state in ("Running", "AwaitingApproval", "Pending"):
            stage.state = "Halted" if phase is not Phase.SUCCEEDED else stage.state
    for name, pod in sorted(p.obs.pods.items()):
        live = pod.phase in ("Pending", "Running") and not pod.deleting
        if live and name != names.teardown_pod_name(p.obs.name):
            p.actions.append(DeletePod(name, f"run {phase.value.lower()}"))
    if spec is None or spec.teardown is None:
        why = "no teardown configured" if spec is not None else "no usable Loop (gone or invalid)"
        s.teardown = TeardownProgress(state="Skipped", message=why)
        s.finished_at = _iso(p.obs.now)
        return
    s.teardown = TeardownProgress(state="Running", pod=names.teardown_pod_name(p.obs.name))
    _teardown_step(p, spec)


def _teardown_step(p: _Pass, spec: LoopSpec | None) -> None:
    """Run the teardown pod exactly once, then mark the run finished."""
    s = p.status
    if s.teardown is None or s.teardown.state != "Running":
        return
    name = names.teardown_pod_name(p.obs.name)
    pod = p.obs.pods.get(name)
    if spec is None or spec.teardown is None:
        why = "the Loop is gone or invalid" if spec is None else "teardown removed from the Loop"
        message = f"teardown abandoned: {why}"
        s.teardown = TeardownProgress(state="Failed", pod=name, message=message)
        s.finished_at = _iso(p.obs.now)
        if pod is not None and pod.phase in ("Pending", "Running") and not pod.deleting:
            p.actions.append(DeletePod(name, message))
        p.event(Reason.TEARDOWN_FAILED, message, warning=True)
        return
    if pod is None:
        last = s.iterations[-1] if s.iterations else None
        p.actions.append(
            CreatePod(
                PodRequest(
                    name,
                    Role.TEARDOWN,
                    s.iteration,
                    s.stage or "",
                    last.cluster if last else LOCAL_CLUSTER,
                    files={"feedback.json": _feedback(s, s.iteration + 1)},
                )
            )
        )
        p.wake_in.append(float(spec.teardown.timeout_seconds))
        return
    error = pod_error(pod, spec.teardown.timeout_seconds, p.obs.now, "teardown")
    if error is None and pod.phase != "Succeeded":
        return
    if error is not None:
        s.teardown = TeardownProgress(state="Failed", pod=name, message=error.message)
        if pod.phase in ("Pending", "Running"):
            p.actions.append(DeletePod(name, error.message))
        p.event(error.reason, error.message, warning=True)
    else:
        s.teardown = TeardownProgress(state="Succeeded", pod=name)
        p.event(Reason.TEARING_DOWN, "teardown succeeded")
    s.finished_at = _iso(p.obs.now)


def _memory_step(p: _Pass) -> None:
    if p.obs.memory_conflict is not None:
        return  # never write into a ConfigMap that is not this Loop's memory
    # what the ConfigMap says is recorded becomes a fact on the run (covers a crash between the
    # append and the I/O layer's status patch)
    through = max(p.obs.memory_iterations, default=0)
    if through > (p.status.memory_recorded_through or 0):
        p.status.memory_recorded_through = through
    pending = [
        AppendMemory(memory_entry(p.obs.name, p.obs.uid, record))
        for record in sorted(p.status.iterations, key=lambda r: r.number)
        if record.decision is not None and record.number not in p.obs.memory_iterations
    ]
    p.actions[:0] = pending  # first, in order: the next pods read memory


# --- helpers ---------------------------------------------------------------------------------


def _reason(value: str | None, default: Reason) -> Reason:
    """A recorded reason as the enum; unknown values (an older or newer status) fall back."""
    try:
        return Reason(value) if value else default
    except ValueError:
        return default


def _is_running(s: LoopRunStatus) -> bool:
    """A separate function so mypy does not narrow ``phase`` across the steps that change it."""
    return s.phase is Phase.RUNNING


def _stage_plan(plan: list[StagePlan], name: str) -> StagePlan:
    return next(st for st in plan if st.name == name)


def _cluster_progress(s: LoopRunStatus, stage: StagePlan, cluster: str) -> ClusterProgress:
    return next(c for c in s.stages[stage.index].clusters if c.name == cluster)


def _feedback(s: LoopRunStatus, iteration: int) -> str:
    """/kloop/feedback.json: the previous iteration's maker outcome and verdicts."""
    previous = next((r for r in s.iterations if r.number == iteration - 1), None)
    if previous is None:
        return json.dumps({"v": 1, "iteration": 0, "verdicts": []})
    return json.dumps(
        {
            "v": 1,
            "iteration": previous.number,
            "stage": previous.stage,
            "cluster": previous.cluster,
            "maker": {
                "outcome": previous.maker.outcome if previous.maker else None,
                "summary": previous.maker.summary if previous.maker else "",
            },
            "verdicts": [
                {"checker": c.name, "verdict": c.verdict, "reasons": c.reasons, "score": c.score}
                for c in previous.checkers
            ],
            "decision": previous.decision,
            "why": previous.why,
        }
    )
