"""The decision function: one observed LoopRun (and the time) in, the next status and actions out.

The run is the outer loop: stages in order, each a set of targets (stage × cluster) whose inner
loops (``core.target``) run side by side, up to the stage's ``maxParallel``. A stage passes when
its targets passed (at most ``maxFailedClusters`` failing, with ``failurePolicy: Continue``);
then the next stage starts or waits for approval. An inconclusive verdict pauses the run until a
human resumes or aborts it.

Order matters in every pass: first every result that is in is recorded (usage, status, memory
keep what happened), then the run may end (abort, deadline, a deleted or changed Loop), and only
then are new pods asked for — never while a budget cap is reached. Only ``summarize`` sets
conditions. Everything here is pure: ``obs.now`` is the time.
"""

from __future__ import annotations

from dataclasses import replace

from kloop.api.conditions import Reason
from kloop.api.loop import LoopSpec
from kloop.api.looprun import (
    ClusterProgress,
    IterationDecision,
    IterationRecord,
    LoopRunStatus,
    Outcome,
    Phase,
    StageProgress,
    StageState,
    TargetState,
    TeardownProgress,
    TeardownState,
    TrackedPod,
)
from kloop.core import names, target
from kloop.core.assess import PodError, pod_error
from kloop.core.conditions import summarize
from kloop.core.connectors import connectors_step, with_connectors
from kloop.core.context import Pass, Target, parse_time
from kloop.core.feedback import feedback, previous_record
from kloop.core.graders import LIVE_PHASES, REMOTE_POLL_SECONDS
from kloop.core.history import bound_status
from kloop.core.memory import memory_entry
from kloop.core.model import (
    LOCAL_CLUSTER,
    AppendMemory,
    ClusterState,
    CreatePod,
    Decision,
    DeletePod,
    ObservedPod,
    ObservedRun,
    PodRequest,
    Role,
    run_is_over,
)
from kloop.core.plan import Limits, StagePlan, build_plan, compute_limits
from kloop.core.trust import ABSENT, own_pod

RESYNC_SECONDS = 30.0
CLUSTER_GRACE_SECONDS = 60.0
"""How long a running target's cluster may stay unusable before the target ends."""
MAX_CLUSTERS_PER_STAGE = 64
"""As many targets as a stage's status holds (``stages[].clusters`` maxItems)."""
LOOP_MISSING_RETRY_SECONDS = 15.0


def _working_copy(status: LoopRunStatus) -> LoopRunStatus:
    """A copy of the observed status to decide on (the observation itself stays untouched).

    Validating the status's own wire form is about 4x cheaper than ``model_copy(deep=True)``
    (a deep copy walks every record in Python; validation runs in pydantic-core), and it is the
    round trip every status already makes through the apiserver.
    """
    return LoopRunStatus.model_validate(status.to_kube())


def decide(obs: ObservedRun) -> Decision:
    """Decide what happens next to a LoopRun."""
    p = Pass(obs, _working_copy(obs.status))
    spec = obs.loop.spec
    if p.status.phase is not None and p.status.phase.finished:
        _finished_step(p, spec)
    elif spec is None:
        _loop_unavailable_step(p)
    else:
        _run_steps(p, spec)
    if spec is not None:
        with_connectors(p, spec)  # mcp.json and header variables for the pods of their roles
    _prune_placed(p)
    keep = spec.status_iterations if spec is not None else None
    bound_status(p.status, keep, obs.memory_iterations, _feedback_sources(p.status))
    _memory_step(p)
    _count_passed(p.status)
    p.status.observed_generation = obs.generation
    summarize(p.status, obs.generation, obs.now, p.stall_reason)
    started = parse_time(p.status.started_at)
    if started is not None and p.status != obs.status:
        # only when something else changed: an idle reconcile must not write status
        end = parse_time(p.status.finished_at) or obs.now
        p.status.usage.wall_seconds = round((end - started).total_seconds(), 1)
    requeue = None if run_is_over(p.status) else min([RESYNC_SECONDS, *p.wake_in])
    return Decision(p.status, p.actions, requeue, p.why or (p.status.message or ""))


# --- the run ----------------------------------------------------------------------------------


def _finished_step(p: Pass, spec: LoopSpec | None) -> None:
    """A finished run: make sure none of its agent pods still runs, then the teardown."""
    _delete_live_pods(p, f"run {p.status.phase.value.lower() if p.status.phase else 'over'}")
    _teardown_step(p, spec)


def _loop_unavailable_step(p: Pass) -> None:
    """No usable Loop: wait for it before the run starts; halt a run that had started."""
    reason = Reason.LOOP_NOT_FOUND if p.obs.loop.uid is None else Reason.INVALID_LOOP
    problem = p.obs.loop.problem or f"Loop {p.obs.loop.name!r} not found"
    started = p.status.phase not in (None, Phase.PENDING)
    if started or p.obs.aborted_by is not None:
        for t in _open_targets(p, None):
            target.collect(p, None, t)
        if p.obs.aborted_by is not None:  # a run waiting for its Loop can still be aborted
            _halt(p, None, Phase.HALTED, Reason.ABORTED, f"aborted by {p.obs.aborted_by}")
            return
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


def _run_steps(p: Pass, spec: LoopSpec) -> None:
    if p.obs.write_rejected is not None:
        reason, message = p.obs.write_rejected
        _halt(p, spec, Phase.FAILED, target.as_reason(reason, Reason.STATUS_REJECTED), message)
        return
    if p.obs.memory_conflict is not None:
        _halt(p, spec, Phase.FAILED, Reason.MEMORY_CONFLICT, p.obs.memory_conflict)
        return
    limits = compute_limits(spec, p.obs.spec.budget)
    plan = build_plan(spec, limits, p.obs.clusters)
    if p.status.phase in (None, Phase.PENDING) or not p.status.stages:
        _start(p, spec, limits, plan)
        return
    pinned = _pinned_plan(plan, p.status)
    for t in _open_targets(p, pinned):
        target.collect(p, spec, t)  # what already happened is kept, whatever comes next
    if p.obs.aborted_by is not None:
        _halt(p, spec, Phase.HALTED, Reason.ABORTED, f"aborted by {p.obs.aborted_by}")
        return
    if _deadline_passed(p, spec, limits):
        return
    if pinned is None:
        message = (
            "the Loop's stages changed during the run (run started with "
            f"{[st.name for st in p.status.stages]}, Loop now has {[st.name for st in plan]}); "
            "start a new run"
        )
        _halt(p, spec, Phase.HALTED, Reason.LOOP_CHANGED, message)
        return
    stage = _stage_plan(pinned, p.status.stage or pinned[0].name)
    if p.status.phase is Phase.AWAITING_APPROVAL:
        if stage.name in p.obs.approvals:
            _enter_stage(p, spec, limits, pinned, stage)
        return
    _resume_step(p, stage)
    _stage_step(p, spec, limits, pinned, stage)


def _start(p: Pass, spec: LoopSpec, limits: Limits, plan: list[StagePlan]) -> None:
    s = p.status
    s.started_at = s.started_at or p.now
    crowded = [st for st in plan if len(st.clusters) > MAX_CLUSTERS_PER_STAGE]
    if crowded:
        message = (
            f"stage {crowded[0].name!r} selects {len(crowded[0].clusters)} clusters; at most "
            f"{MAX_CLUSTERS_PER_STAGE} per stage: narrow its clusterSelector or split the stage"
        )
        _halt(p, spec, Phase.FAILED, Reason.INVALID_LOOP, message)
        return
    s.stages = [
        StageProgress(
            name=st.name,
            state=StageState.PENDING,
            clusters=[ClusterProgress(name=c, state=TargetState.PENDING) for c in st.clusters],
        )
        for st in plan
    ]
    empty = [st.name for st in plan if not st.clusters]
    if empty:
        _halt(p, spec, Phase.FAILED, Reason.INVALID_LOOP, f"stage {empty[0]!r} selects no cluster")
        return
    p.event(Reason.ITERATING, f"run started: {len(plan)} stage(s)")
    _enter_stage(p, spec, limits, plan, plan[0])


def _pinned_plan(plan: list[StagePlan], s: LoopRunStatus) -> list[StagePlan] | None:
    """The plan as the run started it; None when the Loop's stages changed since.

    Clusters are fixed at start: a new or relabelled cluster Secret does not move a running
    rollout. Renamed, added or removed stages halt the run.
    """
    if [st.name for st in plan] != [st.name for st in s.stages]:
        return None
    return [
        replace(st, clusters=tuple(c.name for c in progress.clusters))
        for st, progress in zip(plan, s.stages, strict=True)
    ]


def _enter_stage(
    p: Pass, spec: LoopSpec, limits: Limits, plan: list[StagePlan], stage: StagePlan
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
        progress.approved_by, progress.approved_at = approver, p.now
        p.event(Reason.APPROVED, f"stage {stage.name!r} approved by {approver}")
    s.phase = Phase.RUNNING
    progress.state = StageState.RUNNING
    clusters = ", ".join(stage.clusters)
    p.event(Reason.ITERATING, f"stage {stage.name!r} started: {clusters}")
    _stage_step(p, spec, limits, plan, stage)


def _resume_step(p: Pass, stage: StagePlan) -> None:
    """Paused targets a human resumed (``kloop.dev/resume=<iteration>``) go on as passed."""
    for progress in p.status.stages[stage.index].clusters:
        if progress.state is not TargetState.PAUSED:
            continue
        paused = previous_record(p.status, stage.name, progress.name, p.status.iteration + 1)
        who = p.obs.resumes.get(paused.number) if paused is not None else None
        if paused is None or who is None:
            continue
        progress.state, progress.resumed_by = TargetState.PASSED, who
        progress.finished_at, progress.message = p.now, f"resumed by {who}"
        p.event(
            Reason.RESUMED,
            f"{stage.name}/{progress.name}: iteration {paused.number} resumed by {who}",
        )


def _stage_step(
    p: Pass, spec: LoopSpec, limits: Limits, plan: list[StagePlan], stage: StagePlan
) -> None:
    """Move every target of the stage on, judge failures, start waiting ones, judge the stage."""
    gate = connectors_step(p, spec, stage.name)  # no pod of the stage before its connectors
    if gate.problem is not None:
        _halt(p, spec, Phase.HALTED, Reason.CONNECTOR_UNAVAILABLE, gate.problem)
        return
    if not gate.ready:
        return
    progress = p.status.stages[stage.index]
    for cluster in progress.clusters:
        if cluster.state is TargetState.RUNNING and not _step_target(
            p, spec, limits, stage, cluster
        ):
            return  # the run ended
    if _too_many_failed(p, spec, stage):
        return
    paused = [c for c in progress.clusters if c.state is TargetState.PAUSED]
    running = sum(c.state is TargetState.RUNNING for c in progress.clusters)
    for cluster in progress.clusters:
        if paused or running >= stage.parallel:
            break
        if cluster.state is not TargetState.PENDING:
            continue
        if not _start_target(p, spec, limits, stage, cluster):
            return  # the run ended (a cap was reached)
        running += _running(cluster)  # a cluster it could not use is not running
    if _too_many_failed(p, spec, stage):
        return
    if paused:
        p.status.phase = Phase.PAUSED
        names_ = ", ".join(c.name for c in paused)
        p.status.message = (
            f"stage {stage.name!r} paused: {names_} inconclusive. {paused[0].message}"
        )
        p.why = p.status.message
        return
    p.status.phase = Phase.RUNNING
    if all(c.state.finished for c in progress.clusters):
        _advance(p, spec, limits, plan, stage)


def _too_many_failed(p: Pass, spec: LoopSpec, stage: StagePlan) -> bool:
    """Halt the run when more targets failed than the stage allows, or none could pass."""
    clusters = p.status.stages[stage.index].clusters
    failed = [c for c in clusters if c.state.failed]
    nothing_passed = bool(clusters) and len(failed) == len(clusters)
    if not failed or (len(failed) <= stage.failures_allowed and not nothing_passed):
        return False
    last = max(failed, key=lambda c: c.finished_at or "")  # the one that just failed
    phase = Phase.HALTED if last.state is TargetState.HALTED else Phase.FAILED
    reason = target.as_reason(last.reason, Reason.CLUSTER_FAILED)
    within = len(failed) <= stage.failures_allowed
    why = " (no cluster of the stage passed)" if nothing_passed and within else ""
    _halt(p, spec, phase, reason, f"{stage.name}/{last.name}: {last.message}{why}")
    return True


def _start_target(
    p: Pass, spec: LoopSpec, limits: Limits, stage: StagePlan, cluster: ClusterProgress
) -> bool:
    """Start a target's inner loop if its cluster may be used; False when the run ended."""
    if cluster.name != LOCAL_CLUSTER:
        observed = p.obs.clusters.get(cluster.name)
        problem: tuple[TargetState, Reason, str] | None = None
        if observed is None:
            problem = (
                TargetState.UNAVAILABLE,
                Reason.CLUSTER_UNAVAILABLE,
                f"no cluster Secret named {cluster.name!r} (label kloop.dev/cluster=true)",
            )
        elif observed.state is ClusterState.NOT_ALLOWED:
            problem = (
                TargetState.NOT_ALLOWED,
                Reason.CLUSTER_NOT_ALLOWED,
                observed.message or f"cluster {cluster.name!r} is not allowed for this namespace",
            )
        elif observed.state is ClusterState.UNAVAILABLE:
            problem = (
                TargetState.UNAVAILABLE,
                Reason.CLUSTER_UNAVAILABLE,
                observed.message or f"cluster {cluster.name!r} is unavailable",
            )
        if problem is not None:
            state, reason, message = problem
            cluster.state, cluster.reason, cluster.message = state, reason.value, message
            cluster.finished_at = p.now
            p.event(reason, f"{stage.name}/{cluster.name}: {message}", warning=True)
            return True
    cluster.state, cluster.started_at = TargetState.RUNNING, p.now
    return _next_iteration(p, spec, limits, stage, cluster)


def _step_target(
    p: Pass, spec: LoopSpec, limits: Limits, stage: StagePlan, cluster: ClusterProgress
) -> bool:
    """One target's inner loop, one step; False when the run ended."""
    expiry = p.obs.token_expiry.get(cluster.name)
    if expiry is not None:
        cluster.token_expires_at = expiry
    if _cluster_lost(p, stage, cluster):
        return True
    record = p.open_record(stage.name, cluster.name)
    if record is None:  # running without an open iteration (e.g. right after a restart)
        return _next_iteration(p, spec, limits, stage, cluster)
    t = Target(stage, cluster, record)
    if record.maker is None:
        target.await_maker(p, spec, t)
        return True
    if record.maker.outcome == Outcome.ERROR:
        reason = target.as_reason(record.maker.error_reason, Reason.MAKER_ERROR)
        target.end_iteration(p, record, IterationDecision.FAIL, record.maker.summary)
        target.end_target(p, t, reason, record.maker.summary)
        return True
    target.retry_errored(p, spec, t)
    if target.pod_graders_to_start(p, spec, t) and _halt_if_budget_reached(p, spec, limits):
        return False
    if not target.grade(p, spec, t):
        return True
    decision = target.verdict(p, spec, t)
    if decision is IterationDecision.HALT and cluster.reason == Reason.DRIFT_EXCEEDED:
        _halt(
            p,
            spec,
            Phase.HALTED,
            Reason.DRIFT_EXCEEDED,
            f"{stage.name}/{cluster.name}: {cluster.message}",
        )
        return False
    if decision is not IterationDecision.ITERATE:
        return True
    if _halt_if_budget_reached(p, spec, limits):
        return False
    target.end_iteration(p, record, IterationDecision.ITERATE, record.why or "checks failed")
    return _next_iteration(p, spec, limits, stage, cluster)


def _cluster_lost(p: Pass, stage: StagePlan, cluster: ClusterProgress) -> bool:
    """A running target whose cluster stopped being usable ends after a grace period.

    A probe that fails once (a blip) must not fail a rollout; a cluster that stays unreachable,
    or whose Secret no longer allows the run's namespace, ends the target with that reason
    (stopping its pods) instead of leaving it to the pods' timeouts.
    """
    if cluster.name == LOCAL_CLUSTER:
        return False
    observed = p.obs.clusters.get(cluster.name)
    if observed is not None and observed.state is ClusterState.READY:
        cluster.unavailable_since = None
        return False
    cluster.unavailable_since = cluster.unavailable_since or p.now
    since = parse_time(cluster.unavailable_since)
    waited = (p.obs.now - since).total_seconds() if since is not None else 0.0
    if waited < CLUSTER_GRACE_SECONDS:
        p.wake_in.append(CLUSTER_GRACE_SECONDS - waited + 1)
        return False
    not_allowed = observed is not None and observed.state is ClusterState.NOT_ALLOWED
    reason = Reason.CLUSTER_NOT_ALLOWED if not_allowed else Reason.CLUSTER_UNAVAILABLE
    why = (observed.message if observed is not None else None) or "its cluster Secret is gone"
    message = f"cluster {cluster.name!r} unusable for {waited:.0f}s: {why}"
    record = p.open_record(stage.name, cluster.name)
    if record is not None:
        for tracked in record.pods:
            pod = p.obs.pods.get(tracked.name)
            if pod is not None and _is_live(pod):
                p.actions.append(DeletePod(tracked.name, message))
        target.end_iteration(p, record, IterationDecision.FAIL, message)
    t_state = TargetState.NOT_ALLOWED if not_allowed else TargetState.UNAVAILABLE
    cluster.state, cluster.reason, cluster.message = t_state, reason.value, message[:512]
    cluster.finished_at = p.now
    p.event(reason, f"{stage.name}/{cluster.name}: {message}", warning=True)
    return True


def _next_iteration(
    p: Pass, spec: LoopSpec, limits: Limits, stage: StagePlan, cluster: ClusterProgress
) -> bool:
    """Begin a target's next iteration and ask for its maker; False when a cap ends the run."""
    if _halt_if_budget_reached(p, spec, limits):
        return False
    s = p.status
    s.iteration += 1
    record = IterationRecord(
        number=s.iteration, stage=stage.name, cluster=cluster.name, started_at=p.now
    )
    s.iterations = [*s.iterations, record]  # bound_status folds the oldest
    cluster.iterations += 1
    s.message = f"iteration {record.number} started (stage {stage.name}, cluster {cluster.name})"
    p.event(Reason.ITERATING, s.message)
    t = Target(stage, cluster, record)
    target.await_maker(p, spec, t)
    if record.maker is not None:  # a pod was there before kloop asked: untrusted
        target.end_iteration(p, record, IterationDecision.FAIL, record.maker.summary)
        target.end_target(p, t, Reason.UNTRUSTED_POD, record.maker.summary)
    return True


def _advance(
    p: Pass, spec: LoopSpec, limits: Limits, plan: list[StagePlan], stage: StagePlan
) -> None:
    progress = p.status.stages[stage.index]
    progress.state = StageState.PASSED
    for cluster in progress.clusters:
        cluster.drift_details = []  # the count stays; details live in the iterations and memory
    passed = sum(c.state is TargetState.PASSED for c in progress.clusters)
    p.event(
        Reason.STAGE_PASSED,
        f"stage {stage.name!r} passed: {passed}/{len(progress.clusters)} clusters",
    )
    if stage.index + 1 < len(plan):
        _enter_stage(p, spec, limits, plan, plan[stage.index + 1])
        return
    _finish(p, spec, Phase.SUCCEEDED, Reason.SUCCEEDED, "every stage passed")


def _deadline_passed(p: Pass, spec: LoopSpec, limits: Limits) -> bool:
    started = parse_time(p.status.started_at)
    if limits.deadline_seconds is None or started is None:
        return False
    elapsed = (p.obs.now - started).total_seconds()
    if elapsed < limits.deadline_seconds:
        p.wake_in.append(limits.deadline_seconds - elapsed)
        return False
    message = f"run exceeded deadlineSeconds={limits.deadline_seconds}"
    _halt(p, spec, Phase.HALTED, Reason.DEADLINE, message)
    return True


# --- budgets, halting, finishing ---------------------------------------------------------------


def _budget_reached(p: Pass, limits: Limits) -> tuple[Reason, str] | None:
    """The first token or cost cap that usage has reached (or passed), if any."""
    usage = p.status.usage
    if limits.max_tokens is not None and usage.tokens >= limits.max_tokens:
        message = f"agents used {usage.tokens} tokens; maxTokens={limits.max_tokens}"
        return Reason.TOKEN_BUDGET, message
    if limits.max_cost_usd is not None and usage.cost_usd >= limits.max_cost_usd:
        message = f"agents cost ${usage.cost_usd:.2f}; maxCostUSD={limits.max_cost_usd}"
        return Reason.COST_BUDGET, message
    return None


def _halt_if_budget_reached(p: Pass, spec: LoopSpec, limits: Limits) -> bool:
    """No maker or checker starts while a cap is reached: halt instead."""
    reached = _budget_reached(p, limits)
    if reached is None:
        return False
    _halt(p, spec, Phase.HALTED, *reached)
    return True


def _halt(p: Pass, spec: LoopSpec | None, phase: Phase, reason: Reason, message: str) -> None:
    """End the run early: close every open iteration with this reason, then finish."""
    decision = IterationDecision.FAIL if phase is Phase.FAILED else IterationDecision.HALT
    for record in p.open_records():
        target.end_iteration(p, record, decision, message)
    _finish(p, spec, phase, reason, message)


def _finish(p: Pass, spec: LoopSpec | None, phase: Phase, reason: Reason, message: str) -> None:
    s = p.status
    s.phase = phase
    s.halt_reason = None if phase is Phase.SUCCEEDED else reason.value
    s.message = message
    p.why = message
    p.event(reason, f"run {phase.value.lower()}: {message}", warning=phase is not Phase.SUCCEEDED)
    if phase is not Phase.SUCCEEDED:
        open_states = (StageState.RUNNING, StageState.AWAITING_APPROVAL, StageState.PENDING)
        for stage in s.stages:
            if stage.state in open_states:
                stage.state = StageState.HALTED
            for cluster in stage.clusters:
                if not cluster.state.finished:
                    cluster.state = TargetState.HALTED
    # nothing asked for earlier in this pass starts once the run is over (the teardown aside)
    p.actions = [a for a in p.actions if not isinstance(a, CreatePod)]
    _delete_live_pods(p, f"run {phase.value.lower()}")
    if spec is None or spec.teardown is None:
        why = "no teardown configured" if spec is not None else "no usable Loop (gone or invalid)"
        s.teardown = TeardownProgress(state=TeardownState.SKIPPED, message=why)
        s.finished_at = p.now
        return
    name = names.teardown_pod_name(p.obs.name)
    if name in p.obs.pods:  # there before kloop asked for it: planted, never trusted
        message = f"teardown pod {name} existed before kloop asked for it: not trusted, not run"
        s.teardown = TeardownProgress(state=TeardownState.FAILED, pod=name, message=message)
        s.finished_at = p.now
        p.event(Reason.UNTRUSTED_POD, message, warning=True)
        return
    s.teardown = TeardownProgress(state=TeardownState.RUNNING, pod=name, requested_at=p.now)
    _teardown_step(p, spec)


def _prune_placed(p: Pass) -> None:
    """Forget placed pods that ended (or are gone) once their target holds nothing else of them.

    Their uids are kept in step with the iterations' records (``trust.own_pod``), so a restarted
    operator that cannot reach the target still knows which pod it was.
    """
    kept = []
    for tracked in p.status.placed_pods:
        pod = p.obs.pods.get(tracked.name)
        over = pod is None or pod.phase in ("Succeeded", "Failed")
        if not (over and tracked.name in p.obs.placed_cleaned):
            kept.append(tracked)
    if len(kept) != len(p.status.placed_pods):
        p.status.placed_pods = kept
    if kept:
        p.wake_in.append(REMOTE_POLL_SECONDS)  # nothing watches a target's pods


def _is_live(pod: ObservedPod) -> bool:
    """Still running (or about to), and nobody has asked for its deletion yet."""
    return pod.phase in LIVE_PHASES and not pod.deleting


def _delete_live_pods(p: Pass, why: str) -> None:
    """Delete every agent pod of the run that still runs (never the teardown pod)."""
    already = {a.name for a in p.actions if isinstance(a, DeletePod)}
    teardown = names.teardown_pod_name(p.obs.name)
    for name, pod in sorted(p.obs.pods.items()):
        if _is_live(pod) and name != teardown and name not in already:
            p.actions.append(DeletePod(name, why))


def _teardown_step(p: Pass, spec: LoopSpec | None) -> None:
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
        s.finished_at = p.now
        leftover = p.obs.pods.get(name)
        if leftover is not None and _is_live(leftover):
            p.actions.append(DeletePod(name, message))
        p.event(Reason.TEARDOWN_FAILED, message, warning=True)
        return
    pod = own_pod(p, tracked, name, "teardown")
    s.teardown.uid = tracked[0].uid
    if isinstance(pod, ObservedPod) and pod.phase == ABSENT:
        last = s.iterations[-1] if s.iterations else None
        p.actions.append(
            CreatePod(
                PodRequest(
                    name,
                    Role.TEARDOWN,
                    s.iteration,
                    s.stage or "",
                    last.cluster if last else LOCAL_CLUSTER,
                    files={"feedback.json": _teardown_feedback(s)},
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
        if isinstance(pod, ObservedPod) and _is_live(pod):
            p.actions.append(DeletePod(name, error.message))
        p.event(error.reason, error.message, warning=True)
    else:
        s.teardown = TeardownProgress(state=TeardownState.SUCCEEDED, pod=name, uid=s.teardown.uid)
        p.event(Reason.TEARING_DOWN, "teardown succeeded")
    s.finished_at = p.now


def _teardown_feedback(s: LoopRunStatus) -> str:
    """The teardown reads the run's last decided iteration."""
    last = next((r for r in reversed(s.iterations) if r.decision), None)
    if last is None:
        return feedback(s, "", "", 0)
    return feedback(s, last.stage, last.cluster, last.number + 1)


def _memory_step(p: Pass) -> None:
    if p.obs.memory_conflict is not None:
        return  # never write into a ConfigMap that is not this Loop's memory
    if p.obs.write_rejected is not None and p.obs.write_rejected[0] in (
        Reason.MEMORY_REJECTED,
        Reason.MEMORY_CONFLICT,
    ):
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


def _open_targets(p: Pass, plan: list[StagePlan] | None) -> list[Target]:
    """The targets with an open iteration, as (plan, progress, record)."""
    found = []
    for record in p.open_records():
        index = next((i for i, st in enumerate(p.status.stages) if st.name == record.stage), None)
        if index is None:
            continue
        progress = next(
            (c for c in p.status.stages[index].clusters if c.name == record.cluster), None
        )
        if progress is None:
            continue
        stage = (
            plan[index]
            if plan is not None
            else StagePlan(index, record.stage, (record.cluster,), 1, False)
        )
        found.append(Target(stage, progress, record))
    return found


def _feedback_sources(s: LoopRunStatus) -> set[int]:
    """Records the next iteration of a target still going reads its feedback from: kept."""
    keep: set[int] = set()
    for stage in s.stages:
        for cluster in stage.clusters:
            if cluster.state.finished:
                continue
            last = previous_record(s, stage.name, cluster.name, s.iteration + 1)
            if last is not None:
                keep.add(last.number)
    return keep


def _count_passed(s: LoopRunStatus) -> None:
    """The CLUSTERS column: passed of all clusters in the current stage."""
    current = next((st for st in s.stages if st.name == s.stage), None)
    if current is None:
        return
    passed = sum(c.state is TargetState.PASSED for c in current.clusters)
    s.clusters_passed = f"{passed}/{len(current.clusters)}"


def _running(cluster: ClusterProgress) -> bool:
    """A function so mypy does not narrow ``state`` across the step that changes it."""
    return cluster.state is TargetState.RUNNING


def _stage_plan(plan: list[StagePlan], name: str) -> StagePlan:
    return next(st for st in plan if st.name == name)
