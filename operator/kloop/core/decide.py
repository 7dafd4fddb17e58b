"""The decision function: one observed LoopRun (and the time) in, the next status and actions out.

Reconcile is an ordered list of small steps over a ``_Pass`` that gathers what the steps decide.
Only the summarize step (``conditions.summarize``) sets conditions. Everything here is pure: no
clock, no client, no I/O; ``obs.now`` is the time.

The order matters: first every pod that ended is recorded (so usage, status and memory keep what
already happened), then the run may halt (abort, deadline, Loop gone or changed), and only then
are new pods asked for — never while a budget cap is reached.
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
    IterationDecision,
    IterationRecord,
    LoopRunStatus,
    MakerRecord,
    Outcome,
    Phase,
    RecordedVerdict,
    StageProgress,
    StageState,
    TeardownProgress,
    TeardownState,
    TrackedPod,
)
from kloop.core import names
from kloop.core.assess import PodError, assess_checker, assess_maker, pod_error
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
    ObservedPod,
    ObservedRun,
    PodRequest,
    RecordEvent,
    Role,
    run_is_over,
)
from kloop.core.plan import Limits, StagePlan, build_plan, compute_limits

RESYNC_SECONDS = 30.0
LOOP_MISSING_RETRY_SECONDS = 15.0
# A pod that has ended needs no timeout to be judged; used when the Loop (and its timeouts) is gone.
NO_TIMEOUT = 10**9
LIVE_PHASES = ("Pending", "Running")


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

    @property
    def open_record(self) -> IterationRecord | None:
        """The iteration still waiting for its decision, if any."""
        its = self.status.iterations
        return its[-1] if its and its[-1].decision is None else None


def decide(obs: ObservedRun) -> Decision:
    """Decide what happens next to a LoopRun."""
    p = _Pass(obs, obs.status.model_copy(deep=True))
    spec = obs.loop.spec
    if p.status.phase is not None and p.status.phase.finished:
        _finished_step(p, spec)
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


def _finished_step(p: _Pass, spec: LoopSpec | None) -> None:
    """A finished run: make sure none of its agent pods still runs, then the teardown."""
    _delete_live_pods(p, f"run {p.status.phase.value.lower() if p.status.phase else 'over'}")
    _teardown_step(p, spec)


def _loop_unavailable_step(p: _Pass) -> None:
    """No usable Loop: wait for it before the run starts; halt a run that had started."""
    reason = Reason.LOOP_NOT_FOUND if p.obs.loop.uid is None else Reason.INVALID_LOOP
    problem = p.obs.loop.problem or f"Loop {p.obs.loop.name!r} not found"
    if p.obs.aborted_by is not None:  # a run waiting for its Loop can still be aborted
        record = p.open_record
        if record is not None:
            _collect(p, None, record)
        _halt(p, None, Phase.HALTED, Reason.ABORTED, f"aborted by {p.obs.aborted_by}")
        return
    if p.status.phase in (Phase.RUNNING, Phase.AWAITING_APPROVAL):
        record = p.open_record
        if record is not None:
            _collect(p, None, record)
        message = f"{problem}: the Loop went away or changed under a started run"
        _halt(p, None, Phase.HALTED, reason, message)
        return
    if p.status.message != problem:
        p.event(reason, problem, warning=True)
    p.status.phase = p.status.phase or Phase.PENDING
    p.status.message = problem
    p.stall_reason = reason
    p.why = problem
    p.wake_in.append(LOOP_MISSING_RETRY_SECONDS)


def _run_steps(p: _Pass, spec: LoopSpec) -> None:
    if p.obs.write_rejected is not None:
        reason, message = p.obs.write_rejected
        _halt(p, spec, Phase.FAILED, _reason(reason, Reason.STATUS_REJECTED), message)
        return
    if p.obs.memory_conflict is not None:
        _halt(p, spec, Phase.FAILED, Reason.MEMORY_CONFLICT, p.obs.memory_conflict)
        return
    limits = compute_limits(spec, p.obs.spec.budget)
    plan = build_plan(spec, limits, {LOCAL_CLUSTER: {}, **p.obs.clusters})
    starting = p.status.phase in (None, Phase.PENDING)
    if starting or (p.status.phase is Phase.RUNNING and not p.status.iterations):
        _start(p, spec, limits, plan)
        return
    record = p.open_record
    if record is not None:
        _collect(p, spec, record)  # what already happened is kept, whatever comes next
    if p.obs.aborted_by is not None:
        _halt(p, spec, Phase.HALTED, Reason.ABORTED, f"aborted by {p.obs.aborted_by}")
        return
    if _deadline_passed(p, spec, limits):
        return
    pinned = _pinned_plan(p, spec, plan)
    if pinned is None:
        return
    if p.status.phase is Phase.AWAITING_APPROVAL:
        stage = _stage_plan(pinned, p.status.stage or pinned[0].name)
        if stage.name in p.obs.approvals:
            _enter_stage(p, spec, limits, pinned, stage)
        return
    if record is None:
        return  # nothing open: a decision of this pass already moved on, or nothing to do
    stage = _stage_plan(pinned, record.stage)
    if record.maker is None:
        _await_maker(p, spec, stage, record)
        return
    if record.maker.outcome == Outcome.ERROR:
        reason = _reason(record.maker.error_reason, Reason.MAKER_ERROR)
        _halt(p, spec, Phase.FAILED, reason, record.maker.summary)
        return
    if not _checkers_step(p, spec, limits, stage, record):
        return
    _verdict_step(p, spec, limits, pinned, stage, record)


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
    defaults = LoopSpec.model_fields
    for name, alias in (
        ("concurrency_policy", "concurrencyPolicy"),
        ("successful_runs_history_limit", "successfulRunsHistoryLimit"),
        ("failed_runs_history_limit", "failedRunsHistoryLimit"),
    ):
        if getattr(spec, name) != defaults[name].default:
            inert.append(alias)
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
    _halt(p, spec, Phase.HALTED, Reason.LOOP_CHANGED, message)
    return None


def _start(p: _Pass, spec: LoopSpec, limits: Limits, plan: list[StagePlan]) -> None:
    s = p.status
    s.started_at = s.started_at or _iso(p.obs.now)
    s.stages = [
        StageProgress(
            name=st.name,
            state=StageState.PENDING,
            clusters=[ClusterProgress(name=c, state=StageState.PENDING) for c in st.clusters],
        )
        for st in plan
    ]
    empty = [st.name for st in plan if not st.clusters]
    if empty:
        _halt(p, spec, Phase.FAILED, Reason.INVALID_LOOP, f"stage {empty[0]!r} selects no cluster")
        return
    p.event(Reason.ITERATING, f"run started: {len(plan)} stage(s)")
    inert = _not_yet_supported(spec, plan)
    if inert:
        p.event(
            Reason.NOT_IMPLEMENTED,
            f"accepted but not acted on yet: {', '.join(inert)}",
            warning=True,
        )
    _enter_stage(p, spec, limits, plan, plan[0])


def _enter_stage(
    p: _Pass, spec: LoopSpec, limits: Limits, plan: list[StagePlan], stage: StagePlan
) -> None:
    """Start a stage, or wait for its approval (one Event when the wait begins)."""
    s = p.status
    s.stage = stage.name
    progress = s.stages[stage.index]
    if stage.require_approval and progress.approved_by is None:
        approver = p.obs.approvals.get(stage.name)
        if approver is None:
            s.phase = Phase.AWAITING_APPROVAL
            progress.state = StageState.AWAITING_APPROVAL
            s.message = (
                f"stage {stage.name!r} awaits approval (annotate kloop.dev/approve={stage.name} "
                "and kloop.dev/approved-by=<your username>)"
            )
            p.why = s.message
            p.event(Reason.AWAITING_APPROVAL, s.message)
            return
        progress.approved_by, progress.approved_at = approver, _iso(p.obs.now)
        p.event(Reason.APPROVED, f"stage {stage.name!r} approved by {approver}")
    s.phase = Phase.RUNNING
    progress.state = StageState.RUNNING
    _next_iteration(p, spec, limits, stage, stage.clusters[0])


def _next_iteration(
    p: _Pass, spec: LoopSpec, limits: Limits, stage: StagePlan, cluster: str
) -> None:
    """Begin an iteration and ask for its maker — unless a budget cap is already reached."""
    if _halt_if_budget_reached(p, spec, limits):
        return
    s = p.status
    s.iteration += 1
    record = IterationRecord(
        number=s.iteration, stage=stage.name, cluster=cluster, started_at=_iso(p.obs.now)
    )
    s.iterations = [*s.iterations, record]  # bound_status folds the oldest
    progress = _cluster_progress(s, stage, cluster)
    progress.state = StageState.RUNNING
    progress.iterations += 1
    s.message = f"iteration {record.number} started (stage {stage.name}, cluster {cluster})"
    p.event(Reason.ITERATING, s.message)
    _await_maker(p, spec, stage, record)


def _deadline_passed(p: _Pass, spec: LoopSpec, limits: Limits) -> bool:
    started = _parse_time(p.status.started_at)
    if limits.deadline_seconds is None or started is None:
        return False
    elapsed = (p.obs.now - started).total_seconds()
    if elapsed < limits.deadline_seconds:
        p.wake_in.append(limits.deadline_seconds - elapsed)
        return False
    message = f"run exceeded deadlineSeconds={limits.deadline_seconds}"
    _halt(p, spec, Phase.HALTED, Reason.DEADLINE, message)
    return True


# --- pods: trust, collection, creation ---------------------------------------------------------


def _own_pod(p: _Pass, tracked: list[TrackedPod], name: str, who: str) -> ObservedPod | PodError:
    """The pod kloop created under ``name``, or why there is none it can trust.

    Only a pod kloop asked for (a tracked name) counts, and once its uid is known only that uid:
    a pod planted under the deterministic name before kloop asked for it, or swapped in later,
    never grades anything. A tracked pod that vanished before its result was read is lost.
    Returns a PodError, or an ObservedPod (phase ``Absent`` when it is still to be created).
    """
    entry = next((t for t in tracked if t.name == name), None)
    pod = p.obs.pods.get(name)
    if entry is None:
        if pod is not None:
            return PodError(
                Reason.UNTRUSTED_POD,
                f"{who} pod {name} exists but kloop never asked for it: its result is not trusted",
            )
        return ObservedPod(name, "Absent")
    if pod is None:
        if entry.uid or p.obs.created.get(name):
            return PodError(
                Reason.POD_LOST,
                f"{who} pod {name} disappeared before its result was recorded "
                "(deleted, drained or evicted)",
            )
        return ObservedPod(name, "Absent")
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
    return pod


def _request(p: _Pass, tracked: list[TrackedPod], request: PodRequest) -> None:
    """Ask for a pod, remembering in status that kloop is about to create it."""
    if not any(t.name == request.name for t in tracked):
        tracked.append(TrackedPod(name=request.name, requested_at=_iso(p.obs.now)))
    p.actions.append(CreatePod(request))


def _collect(p: _Pass, spec: LoopSpec | None, record: IterationRecord) -> None:
    """Record the result of every pod of the open iteration that has ended; create nothing."""
    index = next((i for i, st in enumerate(p.status.stages) if st.name == record.stage), 0)
    if record.maker is None:
        name = names.pod_name(p.obs.name, index, record.cluster, record.number, Role.MAKER)
        timeout = spec.maker.timeout_seconds if spec else NO_TIMEOUT
        pod = _own_pod(p, record.pods, name, "maker")
        if isinstance(pod, PodError):
            _record_maker(p, record, pod, name)
        elif pod.phase != "Absent":
            outcome = assess_maker(pod, timeout, p.obs.now)
            if outcome is not None:
                _record_maker(p, record, outcome, name, pod)
    if record.maker is None:
        return
    recorded = {c.name for c in record.checkers}
    checkers: list[tuple[str, Checker | None]]
    if spec is not None:
        checkers = [(c.name, c) for c in spec.checkers]
    else:
        prefix = names.checker_pod_prefix(p.obs.name, index, record.cluster, record.number)
        checkers = [
            (t.name.removeprefix(prefix), None) for t in record.pods if t.name.startswith(prefix)
        ]
    for checker_name, checker in checkers:
        if checker_name in recorded:
            continue
        verdict = _collect_checker(p, index, record, checker_name, checker)
        if verdict is not None:
            record.checkers = [*record.checkers, verdict]
            p.status.usage.tokens += verdict.tokens
            p.status.usage.cost_usd = round(p.status.usage.cost_usd + verdict.cost_usd, 6)


def _record_maker(
    p: _Pass,
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
    if result.outcome == Outcome.ERROR:
        if pod is not None and _is_live(pod):
            p.actions.append(DeletePod(name, result.summary))
        p.event(_reason(result.error_reason, Reason.MAKER_ERROR), result.summary, True)
    else:
        p.status.message = f"iteration {record.number}: maker {result.outcome}, checkers running"
        p.event(
            Reason.ITERATING,
            f"maker of iteration {record.number}: {result.outcome}: {result.summary}"[:1000],
        )


def _collect_checker(
    p: _Pass, index: int, record: IterationRecord, name: str, checker: Checker | None
) -> CheckerRecord | None:
    """A checker's verdict if it has one now (oracle answered, pod ended), else None."""
    if checker is not None and checker.kind is CheckerKind.HTTP:
        outcome = p.obs.oracles.get((record.number, name))
        if outcome is None:
            return None
        return CheckerRecord(
            name=name,
            verdict=outcome.verdict,
            reasons=outcome.reasons,
            error_reason=outcome.error_reason,
        )
    pod_name = names.pod_name(p.obs.name, index, record.cluster, record.number, Role.CHECKER, name)
    pod = _own_pod(p, record.pods, pod_name, f"checker {name!r}")
    if isinstance(pod, PodError):
        return CheckerRecord(
            name=name, verdict=RecordedVerdict.ERROR, reasons=[pod.message], error_reason=pod.reason
        )
    if pod.phase == "Absent":
        return None
    timeout = checker.timeout_seconds if checker is not None else NO_TIMEOUT
    verdict = assess_checker(name, pod, timeout, p.obs.now)
    if verdict is None:
        if pod.created_at is not None:
            p.wake_in.append(timeout - (p.obs.now - pod.created_at).total_seconds() + 1)
        return None
    if verdict.verdict == RecordedVerdict.ERROR and _is_live(pod):
        p.actions.append(DeletePod(pod_name, verdict.reasons[0]))
    return verdict


def _await_maker(p: _Pass, spec: LoopSpec, stage: StagePlan, record: IterationRecord) -> None:
    """The maker has no result yet: create its pod if needed, or wait for it."""
    name = names.pod_name(p.obs.name, stage.index, record.cluster, record.number, Role.MAKER)
    pod = p.obs.pods.get(name)
    tracked = any(t.name == name for t in record.pods)
    if pod is not None and not tracked:
        message = f"maker pod {name} existed before kloop asked for it: its result is not trusted"
        _record_maker(p, record, PodError(Reason.UNTRUSTED_POD, message), name)
        _halt(p, spec, Phase.FAILED, Reason.UNTRUSTED_POD, message)
        return
    if pod is None:
        _request(
            p,
            record.pods,
            PodRequest(
                name,
                Role.MAKER,
                record.number,
                stage.name,
                record.cluster,
                files={"feedback.json": _feedback(p.status, record.number)},
            ),
        )
        p.why = f"maker of iteration {record.number} created"
        p.wake_in.append(float(spec.maker.timeout_seconds))
        return
    p.why = f"waiting for maker {name}"
    if pod.created_at is not None:
        p.wake_in.append(
            spec.maker.timeout_seconds - (p.obs.now - pod.created_at).total_seconds() + 1
        )


def _checkers_step(
    p: _Pass, spec: LoopSpec, limits: Limits, stage: StagePlan, record: IterationRecord
) -> bool:
    """Ask for every checker that has no verdict yet; True once all have one."""
    current = {c.name for c in spec.checkers}
    record.checkers = [c for c in record.checkers if c.name in current]  # renamed or removed
    recorded = {c.name for c in record.checkers}
    missing = [c for c in spec.checkers if c.name not in recorded]
    if not missing:
        return True
    if any(c.verdict == RecordedVerdict.ERROR for c in record.checkers):
        return True  # one checker errored: decide now, the others are stopped with the run
    requested = {t.name for t in record.pods}
    to_create = [
        c
        for c in missing
        if c.kind is CheckerKind.POD and _checker_pod_name(p, stage, record, c) not in requested
    ]
    if to_create and _halt_if_budget_reached(p, spec, limits):
        return False
    for checker in missing:
        if checker.kind is CheckerKind.HTTP:
            p.actions.append(EvaluateOracle(record.number, checker.name))
            continue
        name = _checker_pod_name(p, stage, record, checker)
        if name in requested and name in p.obs.pods:
            continue  # running: its verdict is collected when it ends
        _request(
            p,
            record.pods,
            PodRequest(
                name,
                Role.CHECKER,
                record.number,
                stage.name,
                record.cluster,
                checker=checker.name,
                files={
                    "maker.json": _maker_json(p, record),
                    "feedback.json": _feedback(p.status, record.number),
                },
            ),
        )
        p.wake_in.append(float(checker.timeout_seconds))
    p.why = p.why or f"waiting for checkers of iteration {record.number}"
    return False


def _checker_pod_name(p: _Pass, stage: StagePlan, record: IterationRecord, c: Checker) -> str:
    return names.pod_name(
        p.obs.name, stage.index, record.cluster, record.number, Role.CHECKER, c.name
    )


def _maker_json(p: _Pass, record: IterationRecord) -> str:
    """/kloop/maker.json for checkers: the maker's own result document."""
    maker_pod = p.obs.pods.get(record.maker.pod or "") if record.maker else None
    return (maker_pod.message if maker_pod else None) or json.dumps(
        {
            "outcome": record.maker.outcome if record.maker else None,
            "summary": record.maker.summary if record.maker else "",
        }
    )


def _verdict_step(
    p: _Pass,
    spec: LoopSpec,
    limits: Limits,
    plan: list[StagePlan],
    stage: StagePlan,
    record: IterationRecord,
) -> None:
    errors = [c for c in record.checkers if c.verdict == RecordedVerdict.ERROR]
    if errors:
        why = f"checker {errors[0].name!r} errored: {'; '.join(errors[0].reasons)}"
        reason = _reason(errors[0].error_reason, Reason.CHECKER_FAILED)
        _halt(p, spec, Phase.FAILED, reason, why)
        return
    failing = [c for c in record.checkers if c.verdict != RecordedVerdict.PASS]
    p.status.last_verdict = RecordedVerdict.FAIL if failing else RecordedVerdict.PASS
    progress = _cluster_progress(p.status, stage, record.cluster)
    progress.last_verdict = p.status.last_verdict
    if not failing:
        _end_iteration(p, record, IterationDecision.SUCCEED, "every checker passed")
        p.event(Reason.CHECKS_PASSED, f"iteration {record.number}: every checker passed")
        progress.state = StageState.PASSED
        _advance(p, spec, limits, plan, stage, record.cluster)
        return
    reasons = "; ".join(f"{c.name}: {', '.join(c.reasons) or c.verdict}" for c in failing)
    p.event(Reason.CHECKS_FAILED, f"iteration {record.number}: {reasons}"[:1000])
    if _halt_if_budget_reached(p, spec, limits):
        return
    if progress.iterations >= stage.max_iterations:
        message = (
            f"{progress.iterations} iteration(s) in stage {stage.name!r} without passing "
            f"(maxIterations={stage.max_iterations}); last: {reasons}"
        )
        progress.state = StageState.HALTED
        _halt(p, spec, Phase.HALTED, Reason.MAX_ITERATIONS, message)
        return
    _end_iteration(p, record, IterationDecision.ITERATE, f"checks failed: {reasons}")
    _next_iteration(p, spec, limits, stage, record.cluster)


def _advance(
    p: _Pass,
    spec: LoopSpec,
    limits: Limits,
    plan: list[StagePlan],
    stage: StagePlan,
    cluster: str,
) -> None:
    position = stage.clusters.index(cluster)
    if position + 1 < len(stage.clusters):
        _next_iteration(p, spec, limits, stage, stage.clusters[position + 1])
        return
    p.status.stages[stage.index].state = StageState.PASSED
    if stage.index + 1 < len(plan):
        _enter_stage(p, spec, limits, plan, plan[stage.index + 1])
        return
    _finish(p, spec, Phase.SUCCEEDED, Reason.SUCCEEDED, "every stage passed")


# --- budgets, halting, finishing ---------------------------------------------------------------


def _budget_reached(p: _Pass, limits: Limits) -> tuple[Reason, str] | None:
    """The first token or cost cap that usage has reached (or passed), if any."""
    usage = p.status.usage
    if limits.max_tokens is not None and usage.tokens >= limits.max_tokens:
        return (
            Reason.TOKEN_BUDGET,
            f"agents used {usage.tokens} tokens; maxTokens={limits.max_tokens}",
        )
    if limits.max_cost_usd is not None and usage.cost_usd >= limits.max_cost_usd:
        return (
            Reason.COST_BUDGET,
            f"agents cost ${usage.cost_usd:.2f}; maxCostUSD={limits.max_cost_usd}",
        )
    return None


def _halt_if_budget_reached(p: _Pass, spec: LoopSpec, limits: Limits) -> bool:
    """No maker or checker starts while a cap is reached: halt instead."""
    reached = _budget_reached(p, limits)
    if reached is None:
        return False
    _halt(p, spec, Phase.HALTED, *reached)
    return True


def _end_iteration(
    p: _Pass, record: IterationRecord, decision: IterationDecision, why: str
) -> None:
    record.decision = decision
    record.why = why[:2000]
    record.finished_at = _iso(p.obs.now)
    record.pods = []  # trust bookkeeping is only needed while the iteration is open


def _halt(p: _Pass, spec: LoopSpec | None, phase: Phase, reason: Reason, message: str) -> None:
    """End the run early: close the open iteration with this reason, then finish."""
    record = p.open_record
    if record is not None:
        decision = IterationDecision.FAIL if phase is Phase.FAILED else IterationDecision.HALT
        _end_iteration(p, record, decision, message)
    _finish(p, spec, phase, reason, message)


def _finish(p: _Pass, spec: LoopSpec | None, phase: Phase, reason: Reason, message: str) -> None:
    s = p.status
    s.phase = phase
    s.halt_reason = None if phase is Phase.SUCCEEDED else reason.value
    s.message = message
    p.why = message
    p.event(
        reason, f"run {phase.value.lower()}: {message}"[:1000], warning=phase is not Phase.SUCCEEDED
    )
    if phase is not Phase.SUCCEEDED:
        open_states = (StageState.RUNNING, StageState.AWAITING_APPROVAL, StageState.PENDING)
        for stage in s.stages:
            if stage.state in open_states:
                stage.state = StageState.HALTED
            for cluster in stage.clusters:
                if cluster.state is StageState.RUNNING:
                    cluster.state = StageState.HALTED
    _delete_live_pods(p, f"run {phase.value.lower()}")
    if spec is None or spec.teardown is None:
        why = "no teardown configured" if spec is not None else "no usable Loop (gone or invalid)"
        s.teardown = TeardownProgress(state=TeardownState.SKIPPED, message=why)
        s.finished_at = _iso(p.obs.now)
        return
    name = names.teardown_pod_name(p.obs.name)
    if name in p.obs.pods:  # there before kloop asked for it: planted, never trusted
        message = f"teardown pod {name} existed before kloop asked for it: not trusted, not run"
        s.teardown = TeardownProgress(state=TeardownState.FAILED, pod=name, message=message)
        s.finished_at = _iso(p.obs.now)
        p.event(Reason.UNTRUSTED_POD, message, warning=True)
        return
    s.teardown = TeardownProgress(
        state=TeardownState.RUNNING, pod=name, requested_at=_iso(p.obs.now)
    )
    _teardown_step(p, spec)


def _delete_live_pods(p: _Pass, why: str) -> None:
    """Delete every agent pod of the run that still runs (never the teardown pod)."""
    already = {a.name for a in p.actions if isinstance(a, DeletePod)}
    teardown = names.teardown_pod_name(p.obs.name)
    for name, pod in sorted(p.obs.pods.items()):
        live = _is_live(pod)
        if live and name != teardown and name not in already:
            p.actions.append(DeletePod(name, why))


def _teardown_step(p: _Pass, spec: LoopSpec | None) -> None:
    """Run the teardown pod once, then mark the run finished."""
    s = p.status
    if s.teardown is None or s.teardown.state != TeardownState.RUNNING:
        return
    name = names.teardown_pod_name(p.obs.name)
    tracked = [
        TrackedPod(name=name, requested_at=s.teardown.requested_at or "", uid=s.teardown.uid)
    ]
    if spec is None or spec.teardown is None:
        why = "the Loop is gone or invalid" if spec is None else "teardown removed from the Loop"
        message = f"teardown abandoned: {why}"
        s.teardown = TeardownProgress(state=TeardownState.FAILED, pod=name, message=message)
        s.finished_at = _iso(p.obs.now)
        leftover = p.obs.pods.get(name)
        if leftover is not None and _is_live(leftover):
            p.actions.append(DeletePod(name, message))
        p.event(Reason.TEARDOWN_FAILED, message, warning=True)
        return
    pod = _own_pod(p, tracked, name, "teardown")
    s.teardown.uid = tracked[0].uid
    if isinstance(pod, ObservedPod) and pod.phase == "Absent":
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
    error = (
        pod
        if isinstance(pod, PodError)
        else pod_error(pod, spec.teardown.timeout_seconds, p.obs.now, "teardown")
    )
    if error is None and isinstance(pod, ObservedPod) and pod.phase != "Succeeded":
        return
    if error is not None:
        s.teardown = TeardownProgress(
            state=TeardownState.FAILED, pod=name, message=error.message, uid=s.teardown.uid
        )
        live = isinstance(pod, ObservedPod) and _is_live(pod)
        if live:
            p.actions.append(DeletePod(name, error.message))
        p.event(error.reason, error.message, warning=True)
    else:
        s.teardown = TeardownProgress(state=TeardownState.SUCCEEDED, pod=name, uid=s.teardown.uid)
        p.event(Reason.TEARING_DOWN, "teardown succeeded")
    s.finished_at = _iso(p.obs.now)


def _memory_step(p: _Pass) -> None:
    if p.obs.memory_conflict is not None:
        return  # never write into a ConfigMap that is not this Loop's memory
    if p.obs.write_rejected is not None and p.obs.write_rejected[0] == Reason.MEMORY_REJECTED:
        return  # the apiserver refuses it for good: the run fails instead of retrying forever
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


def _is_live(pod: ObservedPod) -> bool:
    """Still running (or about to), and nobody has asked for its deletion yet."""
    return pod.phase in LIVE_PHASES and not pod.deleting


def _reason(value: str | None, default: Reason) -> Reason:
    """A recorded reason as the enum; unknown values (an older or newer status) fall back."""
    try:
        return Reason(value) if value else default
    except ValueError:
        return default


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
