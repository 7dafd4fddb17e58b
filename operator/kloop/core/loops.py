"""A Loop's pass, pure: its runs and the time -> the run to start, the runs to delete, status.

The Loop controller (``kloop/loops.py``) is the one writer of the status fields computed here;
``status.triggers`` belongs to the trigger code and is never part of the patch.

History limits delete only runs the Loop owns (an ownerReference to it, controller true): runs
started by its schedule, its triggers or ``kubectl kloop run``. A LoopRun someone applied
themselves (kubectl, Flux, Argo CD) is never deleted: GitOps would re-create it and it would run
again. A finished run is deleted only once its iterations are in the Loop's memory and no pod
placed in a target cluster awaits clean-up, so memory keeps every entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kloop.api.conditions import Condition, ConditionStatus, ConditionType, Reason
from kloop.api.loop import LoopSpec
from kloop.core import names
from kloop.core.conditions import build_condition
from kloop.core.context import iso, parse_time
from kloop.core.launch import RunRequest, scheduled_run_name
from kloop.core.schedule import TOO_MANY_MISSED, ScheduleError, compute_due, latest_time, parse

FINAL_PHASES = ("Succeeded", "Failed", "Halted")
FAILED_PHASES = ("Failed", "Halted")
OWNED_FIELDS = (
    "observedGeneration",
    "lastRun",
    "phase",
    "lastRunTime",
    "lastSuccessfulRun",
    "lastSuccessfulTime",
    "lastScheduleTime",
    "nextScheduleTime",
    "active",
    "conditions",
)
"""The Loop.status fields this pass writes (never ``triggers``)."""

WAKE_MARGIN = timedelta(seconds=1)
"""Wake this long after a scheduled time, so the time is surely past when the pass runs."""


def run_finished(run: Mapping[str, Any]) -> bool:
    """A run whose phase is final and whose teardown is over (or none)."""
    status = run.get("status") or {}
    if status.get("phase") not in FINAL_PHASES:
        return False
    return ((status.get("teardown") or {}).get("state")) != "Running"


@dataclass(frozen=True)
class ObservedLoopRun:
    """What a Loop's pass needs to know of one of its LoopRuns."""

    name: str
    created: str
    phase: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    finished: bool = False
    owned: bool = False
    """An ownerReference to this Loop (scheduled, triggered or CLI-started): prunable."""
    settled: bool = True
    """Every decided iteration is in memory and no placed pod awaits clean-up."""

    @classmethod
    def from_json(cls, run: Mapping[str, Any], loop_uid: str) -> ObservedLoopRun:
        """Read a LoopRun object (as the API returns it)."""
        meta = run.get("metadata") or {}
        status = run.get("status") or {}
        decided = [
            int(r.get("number") or 0)
            for r in status.get("iterations") or []
            if r.get("decision") is not None
        ]
        recorded = int(status.get("memoryRecordedThrough") or 0)
        return cls(
            name=meta["name"],
            created=meta.get("creationTimestamp") or "",
            phase=status.get("phase"),
            started_at=status.get("startedAt"),
            finished_at=status.get("finishedAt"),
            finished=run_finished(run),
            owned=any(
                o.get("uid") == loop_uid and o.get("controller")
                for o in meta.get("ownerReferences") or []
            ),
            settled=max(decided, default=0) <= recorded and not status.get("placedPods"),
        )


@dataclass(frozen=True)
class ObservedLoop:
    """A Loop as one pass sees it: its spec (None when invalid), its status, its runs, now."""

    name: str
    uid: str
    generation: int
    created: str
    spec: LoopSpec | None
    status: Mapping[str, Any]
    runs: Sequence[ObservedLoopRun]
    now: datetime
    invalid: str | None = None
    """Why the spec could not be read (then ``spec`` is None)."""


@dataclass(frozen=True)
class LoopEvent:
    """A Kubernetes Event to post on the Loop."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class LoopDecision:
    """What one pass does: start at most one run, delete old ones, patch status, sleep."""

    status: dict[str, Any]
    """A merge patch of ``OWNED_FIELDS`` (None deletes a field)."""
    start: RunRequest | None = None
    delete: tuple[str, ...] = ()
    events: tuple[LoopEvent, ...] = ()
    requeue_after: float | None = None
    """Seconds until the next scheduled time (None: only events wake the Loop)."""
    why: str = ""


def scheduled_request(loop: str, scheduled: datetime) -> RunRequest:
    """The run a scheduled time starts: CronJob-style name, the time in context and annotation."""
    when = iso(scheduled)
    return RunRequest(
        name=scheduled_run_name(loop, scheduled),
        cause=f"scheduled for {when}",
        context={"scheduledTime": when},
        annotations={names.ANNOTATION_SCHEDULED_AT: when},
    )


@dataclass
class _Schedule:
    start: RunRequest | None = None
    last_schedule_time: str | None = None
    next_time: datetime | None = None
    events: list[LoopEvent] = field(default_factory=list)
    ready: tuple[ConditionStatus, str, str] = (ConditionStatus.TRUE, Reason.LOOP_READY, "")


def _last_ready_reason(loop: ObservedLoop) -> str | None:
    """The Ready reason the previous pass wrote (None before the first pass)."""
    conditions = loop.status.get("conditions") or []
    return next((c.get("reason") for c in conditions if c.get("type") == "Ready"), None)


def _schedule(loop: ObservedLoop) -> _Schedule:
    """The schedule's part of the pass: what is due, what to say about it."""
    out = _Schedule(last_schedule_time=loop.status.get("lastScheduleTime"))
    spec = loop.spec
    if spec is None:
        out.ready = (ConditionStatus.FALSE, Reason.INVALID_LOOP, loop.invalid or "invalid spec")
        return out
    if spec.schedule is None:
        out.ready = (
            ConditionStatus.TRUE,
            Reason.LOOP_READY,
            "no schedule: runs start by LoopRun, trigger or kubectl kloop run",
        )
        return out
    try:
        schedule = parse(spec.schedule, spec.time_zone)
    except ScheduleError as err:
        out.ready = (ConditionStatus.FALSE, err.reason, err.message)
        return out
    since = parse_time(out.last_schedule_time) or parse_time(loop.created) or loop.now
    if out.last_schedule_time is None and _last_ready_reason(loop) == Reason.LOOP_READY:
        # the schedule was just added to a Loop that ran without one: times before it existed
        # are not missed (a CronJob always has its schedule, so its creation is the start)
        before = latest_time(schedule, since, loop.now)
        if before is not None:
            since = before
            out.last_schedule_time = iso(before)
    if spec.suspend:
        out.ready = (
            ConditionStatus.TRUE,
            Reason.SUSPENDED,
            "suspended: the schedule starts no runs (times passing now count as missed)",
        )
        return out
    due = compute_due(schedule, since, loop.now, spec.starting_deadline_seconds)
    out.next_time = due.next_time
    if due.too_many_missed:
        out.events.append(
            LoopEvent(
                "Warning",
                Reason.TOO_MANY_MISSED_STARTS,
                f"more than {TOO_MANY_MISSED} scheduled times were missed since "
                f"{iso(since)}; only the most recent is considered (check the operator's "
                "uptime, or set startingDeadlineSeconds)",
            )
        )
    if due.scheduled is not None:
        out.last_schedule_time = iso(due.scheduled)
        if due.too_late:
            out.events.append(
                LoopEvent(
                    "Warning",
                    Reason.MISSED_SCHEDULE,
                    f"skipped the run scheduled for {iso(due.scheduled)}: more than "
                    f"startingDeadlineSeconds ({spec.starting_deadline_seconds}s) late",
                )
            )
        else:
            out.start = scheduled_request(loop.name, due.scheduled)
    next_text = iso(due.next_time) if due.next_time else "never"
    out.ready = (ConditionStatus.TRUE, Reason.SCHEDULED, f"next run at {next_text}")
    return out


def _newest(runs: Sequence[ObservedLoopRun]) -> ObservedLoopRun | None:
    return max(runs, key=lambda r: (r.created, r.name), default=None)


def _run_fields(loop: ObservedLoop) -> dict[str, Any]:
    """lastRun, phase, lastRunTime, lastSuccessful*, active: from the runs that exist.

    Fields about runs that are gone (pruned, deleted) keep their last value.
    """
    fields: dict[str, Any] = {}
    newest = _newest(loop.runs)
    if newest is not None:
        fields["lastRun"] = newest.name
        fields["phase"] = newest.phase or "Pending"
        fields["lastRunTime"] = newest.started_at or newest.created
    succeeded = [r for r in loop.runs if r.phase == "Succeeded"]
    best = max(succeeded, key=lambda r: (r.finished_at or r.created, r.name), default=None)
    previous = loop.status.get("lastSuccessfulTime") or ""
    if best is not None and (best.finished_at or best.created) >= previous:
        fields["lastSuccessfulRun"] = best.name
        fields["lastSuccessfulTime"] = best.finished_at or best.created
    active = [
        r.name for r in sorted(loop.runs, key=lambda r: (r.created, r.name)) if not r.finished
    ]
    fields["active"] = active or None
    return fields


def compute_pruning(spec: LoopSpec, runs: Sequence[ObservedLoopRun]) -> tuple[str, ...]:
    """Finished runs the Loop owns beyond its history limits, oldest first.

    Succeeded runs count against successfulRunsHistoryLimit; Failed and Halted runs against
    failedRunsHistoryLimit. Unowned runs neither count nor go; unsettled ones count but wait.
    """
    doomed: list[ObservedLoopRun] = []
    for limit, phases in (
        (spec.successful_runs_history_limit, ("Succeeded",)),
        (spec.failed_runs_history_limit, FAILED_PHASES),
    ):
        kept = sorted(
            (r for r in runs if r.owned and r.finished and r.phase in phases),
            key=lambda r: (r.finished_at or r.created, r.name),
        )
        doomed += kept[: max(0, len(kept) - limit)]
    doomed.sort(key=lambda r: (r.finished_at or r.created, r.name))
    return tuple(r.name for r in doomed if r.settled)


def decide_loop(loop: ObservedLoop) -> LoopDecision:
    """The schedule's due run, the runs to prune and the Loop's status, for one pass."""
    sched = _schedule(loop)
    status: dict[str, Any] = {"observedGeneration": loop.generation}
    status.update(_run_fields(loop))
    status["lastScheduleTime"] = sched.last_schedule_time
    status["nextScheduleTime"] = iso(sched.next_time) if sched.next_time else None
    previous = {c["type"]: Condition.model_validate(c) for c in loop.status.get("conditions") or []}
    ready_status, reason, message = sched.ready
    conditions = [
        build_condition(
            previous,
            ConditionType.READY,
            ready_status,
            str(reason),
            message,
            loop.generation,
            loop.now,
        )
    ]
    if ready_status is ConditionStatus.FALSE:  # kstatus: it will not progress without a human
        conditions.append(
            build_condition(
                previous,
                ConditionType.STALLED,
                ConditionStatus.TRUE,
                str(reason),
                message,
                loop.generation,
                loop.now,
            )
        )
    status["conditions"] = [c.to_kube() for c in conditions]
    delete = compute_pruning(loop.spec, loop.runs) if loop.spec is not None else ()
    requeue = None
    if sched.next_time is not None:
        requeue = max(0.0, (sched.next_time - loop.now + WAKE_MARGIN).total_seconds())
    return LoopDecision(
        status=status,
        start=sched.start,
        delete=delete,
        events=tuple(sched.events),
        requeue_after=requeue,
        why=message,
    )


def status_patch(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``wanted`` that differ from ``current`` (empty: nothing to write)."""
    return {k: v for k, v in wanted.items() if current.get(k) != v}
