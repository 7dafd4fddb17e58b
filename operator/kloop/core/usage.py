"""How much of its caps a run has used, how long it has waited, when it last moved.

The numbers behind kloop's per-run gauges, computed from a LoopRun's status alone (so they are
right after an operator restart too); ``kloop.metrics`` exports them.
"""

from __future__ import annotations

from datetime import datetime

from kloop.api.conditions import ConditionType
from kloop.api.loop import LoopSpec
from kloop.api.looprun import IterationRecord, LoopRunSpec, LoopRunStatus, Phase
from kloop.core.context import parse_time
from kloop.core.model import IMPLICIT_STAGE
from kloop.core.plan import compute_limits


def budget_used(
    spec: LoopSpec, run: LoopRunSpec, status: LoopRunStatus, now: datetime
) -> dict[str, float]:
    """Used fraction of each cap the run has (1.0 = spent): iterations, tokens, cost, deadline.

    Iterations count the started ones of the current stage, per cluster (the busiest cluster),
    against that stage's cap, since that is the cap that halts the run.
    """
    limits = compute_limits(spec, run.budget)
    used = {"iterations": _iterations_used(spec, limits.max_iterations, status)}
    if limits.max_tokens:
        used["tokens"] = status.usage.tokens / limits.max_tokens
    if limits.max_cost_usd:
        used["cost"] = status.usage.cost_usd / limits.max_cost_usd
    started = parse_time(status.started_at)
    if limits.deadline_seconds and started is not None:
        used["deadline"] = max(0.0, (now - started).total_seconds()) / limits.deadline_seconds
    return used


def _iterations_used(spec: LoopSpec, cap: int, status: LoopRunStatus) -> float:
    stage = next((s for s in spec.stages or [] if s.name == status.stage), None)
    if stage is not None:
        cap = min(stage.max_iterations or cap, cap)
    progress = next((s for s in status.stages if s.name == status.stage), None)
    if progress is None or not progress.clusters or status.stage == IMPLICIT_STAGE:
        return status.iteration / cap
    return max(c.iterations for c in progress.clusters) / cap


def awaiting_since(status: LoopRunStatus) -> datetime | None:
    """When the run began to wait for an approval (its AwaitingApproval condition), if it is."""
    if status.phase is not Phase.AWAITING_APPROVAL:
        return None
    for condition in status.conditions:
        if condition.type == ConditionType.AWAITING_APPROVAL.value:
            return parse_time(condition.last_transition_time)
    return None


def approval_waits(before: LoopRunStatus, after: LoopRunStatus) -> list[float]:
    """Seconds each stage approved between two statuses waited for its approval."""
    since = awaiting_since(before)
    if since is None:
        return []
    was = {s.name: s.approved_at for s in before.stages}
    waits = []
    for stage in after.stages:
        approved = parse_time(stage.approved_at)
        if approved is not None and was.get(stage.name) is None:
            waits.append(max(0.0, (approved - since).total_seconds()))
    return waits


def iteration_seconds(record: IterationRecord) -> float | None:
    """An ended iteration's wall time, from its maker pod's creation to its decision."""
    started, ended = parse_time(record.started_at), parse_time(record.finished_at)
    if record.decision is None or started is None or ended is None:
        return None
    return max(0.0, (ended - started).total_seconds())


def progress_mark(status: LoopRunStatus) -> tuple[object, ...]:
    """What changes whenever a run moves on: phase, stage, iteration, results recorded."""
    results = tuple(
        (r.number, r.maker is not None, len(r.checkers), r.decision) for r in status.iterations
    )
    teardown = status.teardown.state if status.teardown else None
    return (status.phase, status.stage, status.iteration, status.clusters_passed, results, teardown)


def last_activity(status: LoopRunStatus) -> datetime | None:
    """The newest moment the status itself records (start, iterations, approvals)."""
    stamps = [status.started_at]
    for record in status.iterations:
        stamps += [record.started_at, record.finished_at]
    stamps += [s.approved_at for s in status.stages]
    times = [t for t in (parse_time(s) for s in stamps) if t is not None]
    return max(times) if times else None
