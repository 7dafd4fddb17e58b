"""Which notifications a status change calls for: pure, derived from (old status, new status).

Like the metrics (``kloop.metrics.record_transition``), notifications are computed from what one
status write changed, never from the core's internals: a status written twice with the same
phase changes nothing, so it notifies nothing, and an operator restarting from a stored status
sees no transition to repeat. Each notification carries an idempotency key built from the run's
uid and what it is about (``<uid>/<event>/<stage>/<iteration>``), so a receiver can drop the
duplicates a retry may cause (a request that reached it but whose answer was lost).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kloop.api.loop import NotifyEvent, NotifyTarget
from kloop.api.looprun import (
    ClusterProgress,
    IterationRecord,
    LoopRunStatus,
    Phase,
    StageProgress,
    StageState,
    TargetState,
)

PAYLOAD_VERSION = 1
MESSAGE_CHARS = 1000

# a stage counts as started when it leaves these states for a working (or worked) one
_NOT_STARTED = (None, StageState.PENDING.value, StageState.AWAITING_APPROVAL.value)
_STARTED = (StageState.RUNNING.value, StageState.PASSED.value, StageState.FAILED.value)
_FINAL_EVENTS = {
    Phase.SUCCEEDED: NotifyEvent.SUCCEEDED,
    Phase.FAILED: NotifyEvent.FAILED,
    Phase.HALTED: NotifyEvent.HALTED,
}


@dataclass(frozen=True)
class RunRef:
    """The run a notification is about."""

    namespace: str
    name: str
    uid: str
    loop: str


@dataclass(frozen=True)
class Notification:
    """One event to send: its key (for dedup and ``Idempotency-Key``) and the JSON document."""

    event: NotifyEvent
    key: str
    payload: dict[str, Any]


def compute_notifications(
    run: RunRef, before: LoopRunStatus, after: LoopRunStatus, now: str
) -> list[Notification]:
    """The events one status write caused, in the order they happened, each once.

    Order: stages started, iterations started and finished, then the run's phase (awaiting
    approval, paused, or final), so a receiver sees "stage b started" before "run succeeded".
    """
    found: list[Notification] = []
    old_stages = {s.name: s for s in before.stages}
    for stage in after.stages:
        old = old_stages.get(stage.name)
        if _value(stage.state) in _STARTED and (_value(old.state) if old else None) in _NOT_STARTED:
            found.append(_build(run, after, NotifyEvent.STAGE_STARTED, stage.name, None, now))
    old_records = {_record_id(r): r for r in before.iterations}
    for record in after.iterations:
        previous = old_records.get(_record_id(record))
        if previous is None:
            found.append(_iteration(run, after, NotifyEvent.ITERATION_STARTED, record, now))
        if record.decision is not None and (previous is None or previous.decision is None):
            found.append(_iteration(run, after, NotifyEvent.ITERATION_FINISHED, record, now))
    if after.phase is not None and after.phase != before.phase:
        event = _phase_event(after.phase)
        if event is not None:
            about = _phase_stage(after)
            number = _stage_iterations(after, about) if event is NotifyEvent.PAUSED else None
            found.append(_build(run, after, event, about, number, now))
    return _unique(found)


def select(
    targets: Iterable[NotifyTarget], notifications: Iterable[Notification]
) -> list[tuple[NotifyTarget, Notification]]:
    """Each (target, notification) to deliver: the events each target asked for."""
    notifications = list(notifications)
    return [(t, n) for t in targets for n in notifications if n.event in t.events]


def backoff_delay(attempt: int, first: float, cap: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (from 1): doubling, capped."""
    return float(min(cap, first * 2 ** max(0, attempt - 1)))


def retryable_status(code: int) -> bool:
    """Whether a receiver's HTTP status may change by itself (429 and 5xx); 4xx will not."""
    return code == 429 or code >= 500


def _value(state: object) -> str | None:
    """A state as its string (stages and targets use two enums with shared values)."""
    return None if state is None else str(getattr(state, "value", state))


def _phase_event(phase: Phase) -> NotifyEvent | None:
    if phase is Phase.AWAITING_APPROVAL:
        return NotifyEvent.AWAITING_APPROVAL
    if phase is Phase.PAUSED:
        return NotifyEvent.PAUSED
    return _FINAL_EVENTS.get(phase)


def _phase_stage(status: LoopRunStatus) -> str | None:
    """The stage a phase change is about: the one awaiting approval, else the current one."""
    if status.phase is Phase.AWAITING_APPROVAL:
        waiting = [
            s.name for s in status.stages if _value(s.state) == StageState.AWAITING_APPROVAL.value
        ]
        if waiting:
            return waiting[0]
    return status.stage


def _stage_iterations(status: LoopRunStatus, stage: str | None) -> int:
    """Iterations run so far in a stage (all its clusters): it grows between two pauses."""
    progress = _stage(status, stage)
    if progress is None or not progress.clusters:
        return status.iteration
    return sum(c.iterations for c in progress.clusters)


def _stage(status: LoopRunStatus, name: str | None) -> StageProgress | None:
    return next((s for s in status.stages if s.name == name), None)


def _record_id(record: IterationRecord) -> tuple[str, str, int]:
    return (record.stage, record.cluster, record.number)


def _iteration(
    run: RunRef, status: LoopRunStatus, event: NotifyEvent, record: IterationRecord, now: str
) -> Notification:
    note = _build(run, status, event, record.stage, record.number, now, cluster=record.cluster)
    if event is NotifyEvent.ITERATION_FINISHED:
        note.payload["decision"] = record.decision.value if record.decision else None
        note.payload["why"] = (record.why or "")[:MESSAGE_CHARS] or None
        note.payload["verdicts"] = [
            {"checker": c.name, "verdict": c.verdict.value} for c in record.checkers
        ]
    return note


def _build(
    run: RunRef,
    status: LoopRunStatus,
    event: NotifyEvent,
    stage: str | None,
    iteration: int | None,
    now: str,
    cluster: str | None = None,
) -> Notification:
    parts = [run.uid, event.value]
    if cluster is not None:
        parts.append(f"{stage or '-'}/{cluster}")
    elif stage is not None:
        parts.append(stage)
    if iteration is not None:
        parts.append(str(iteration))
    key = "/".join(parts)
    progress = _stage(status, stage)
    payload: dict[str, Any] = {
        "version": PAYLOAD_VERSION,
        "event": event.value,
        "idempotencyKey": key,
        "time": now,
        "namespace": run.namespace,
        "run": run.name,
        "uid": run.uid,
        "loop": run.loop,
        "phase": status.phase.value if status.phase else None,
        "stage": stage,
        "iteration": iteration if iteration is not None else status.iteration,
        "clusters": [_cluster(c) for c in progress.clusters] if progress else [],
        "stages": [{"name": s.name, "state": _value(s.state)} for s in status.stages],
        "reason": _reason(status, event, progress),
        "message": (status.message or "")[:MESSAGE_CHARS] or None,
    }
    if cluster is not None:
        payload["cluster"] = cluster
    if progress is not None and progress.approved_by:
        payload["approvedBy"] = progress.approved_by
    return Notification(event, key, payload)


def _cluster(cluster: ClusterProgress) -> dict[str, Any]:
    return {
        "name": cluster.name,
        "state": _value(cluster.state),
        "iterations": cluster.iterations,
        "lastVerdict": _value(cluster.last_verdict),
        "reason": cluster.reason,
    }


def _reason(status: LoopRunStatus, event: NotifyEvent, stage: StageProgress | None) -> str | None:
    """The run's halt reason when it ended; a paused cluster's reason when it paused."""
    if event in _FINAL_EVENTS.values():
        return status.halt_reason or ("Succeeded" if event is NotifyEvent.SUCCEEDED else None)
    if event is NotifyEvent.PAUSED and stage is not None:
        paused = [c.reason for c in stage.clusters if _value(c.state) == TargetState.PAUSED.value]
        return next((r for r in paused if r), None)
    return None


def _unique(notes: list[Notification]) -> list[Notification]:
    seen: set[str] = set()
    out = []
    for note in notes:
        if note.key not in seen:
            seen.add(note.key)
            out.append(note)
    return out
