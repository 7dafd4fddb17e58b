"""A Loop's pass (kloop.core.loops): the scheduled run, history pruning and Loop.status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kloop.core.loops import (
    ObservedLoop,
    ObservedLoopRun,
    compute_pruning,
    decide_loop,
    status_patch,
)
from tests.unit.builders import loop_spec

pytestmark = pytest.mark.unit

LOOP_UID = "loop-uid"
NOW = datetime(2026, 5, 1, 10, 5, 3, tzinfo=UTC)


def run(
    name: str,
    phase: str | None = "Succeeded",
    created: str = "2026-05-01T09:00:00Z",
    finished_at: str | None = None,
    owned: bool = True,
    **status: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created}
    if owned:
        meta["ownerReferences"] = [
            {"kind": "Loop", "name": "l", "uid": LOOP_UID, "controller": True}
        ]
    body: dict[str, Any] = {"phase": phase, "startedAt": created, **status}
    if phase in ("Succeeded", "Failed", "Halted"):
        body["finishedAt"] = finished_at or created
    return {"metadata": meta, "status": body}


def observed(
    runs: list[dict[str, Any]] | None = None,
    status: dict[str, Any] | None = None,
    now: datetime = NOW,
    **spec: Any,
) -> ObservedLoop:
    return ObservedLoop(
        name="l",
        uid=LOOP_UID,
        generation=4,
        created="2026-05-01T09:58:30Z",
        spec=loop_spec(**spec),
        status=status or {},
        runs=[ObservedLoopRun.from_json(r, LOOP_UID) for r in runs or []],
        now=now,
    )


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


# --- schedule ---------------------------------------------------------------------------------


def test_a_due_scheduled_time_starts_a_run_named_by_it() -> None:
    d = decide_loop(observed(schedule="*/5 * * * *"))
    assert d.start is not None
    assert d.start.name == f"l-{int(datetime(2026, 5, 1, 10, 5, tzinfo=UTC).timestamp()) // 60}"
    assert d.start.context == {"scheduledTime": "2026-05-01T10:05:00Z"}
    assert d.start.annotations == {"kloop.dev/scheduled-at": "2026-05-01T10:05:00Z"}
    assert d.status["lastScheduleTime"] == "2026-05-01T10:05:00Z"
    assert d.status["nextScheduleTime"] == "2026-05-01T10:10:00Z"
    assert d.requeue_after == pytest.approx(4 * 60 + 57 + 1)
    assert ready(d.status)["status"] == "True"
    assert ready(d.status)["reason"] == "Scheduled"


def test_the_first_time_is_counted_from_the_loops_creation() -> None:
    d = decide_loop(observed(schedule="*/5 * * * *", now=datetime(2026, 5, 1, 9, 59, tzinfo=UTC)))
    assert d.start is None
    assert d.status["lastScheduleTime"] is None
    assert d.status["nextScheduleTime"] == "2026-05-01T10:00:00Z"


def test_a_schedule_added_to_a_loop_that_had_none_counts_from_when_it_was_added() -> None:
    # the Loop was created at 09:58:30 and served without a schedule; at 14:00 one is added
    before = decide_loop(observed()).status
    later = datetime(2026, 5, 1, 14, 0, 3, tzinfo=UTC)
    d = decide_loop(observed(schedule="0 * * * *", status=before, now=later))
    assert d.start is None  # not 14:00, nor 10:00..13:00: the schedule did not exist then
    assert d.events == ()
    assert d.status["lastScheduleTime"] == "2026-05-01T14:00:00Z"
    assert d.status["nextScheduleTime"] == "2026-05-01T15:00:00Z"
    # the next pass counts from there, not from the Loop's creation
    again = decide_loop(observed(schedule="0 * * * *", status=d.status, now=later))
    assert again.start is None
    suspended = decide_loop(observed(schedule="0 * * * *", suspend=True, status=before, now=later))
    assert suspended.status["lastScheduleTime"] == "2026-05-01T14:00:00Z"


def test_a_time_already_acted_on_starts_nothing() -> None:
    d = decide_loop(
        observed(schedule="*/5 * * * *", status={"lastScheduleTime": "2026-05-01T10:05:00Z"})
    )
    assert d.start is None
    assert d.events == ()


def test_after_an_outage_one_run_starts_for_the_most_recent_time_with_a_warning() -> None:
    d = decide_loop(
        observed(
            schedule="* * * * *",
            status={"lastScheduleTime": "2026-04-01T00:00:00Z"},
        )
    )
    assert d.start is not None
    assert d.start.context == {"scheduledTime": "2026-05-01T10:05:00Z"}
    assert [e.reason for e in d.events] == ["TooManyMissedStarts"]
    assert d.events[0].type == "Warning"


def test_a_time_past_the_starting_deadline_is_skipped_with_an_event_and_not_retried() -> None:
    obs = observed(
        schedule="0 * * * *",
        startingDeadlineSeconds=60,
        status={"lastScheduleTime": "2026-05-01T09:00:00Z"},
    )
    d = decide_loop(obs)
    assert d.start is None
    assert [e.reason for e in d.events] == ["MissedSchedule"]
    assert d.status["lastScheduleTime"] == "2026-05-01T10:00:00Z"  # skipped for good


def test_suspend_starts_nothing_clears_the_next_time_and_keeps_missed_times_pending() -> None:
    status = {"lastScheduleTime": "2026-05-01T10:00:00Z", "nextScheduleTime": "x"}
    d = decide_loop(observed(schedule="*/5 * * * *", suspend=True, status=status))
    assert d.start is None
    assert d.status["nextScheduleTime"] is None
    assert d.status["lastScheduleTime"] == "2026-05-01T10:00:00Z"
    assert d.requeue_after is None
    assert ready(d.status)["status"] == "True"
    assert ready(d.status)["reason"] == "Suspended"
    # resumed: the time missed while suspended starts at once (no startingDeadlineSeconds)
    resumed = decide_loop(observed(schedule="*/5 * * * *", status=status))
    assert resumed.start is not None
    assert resumed.start.context == {"scheduledTime": "2026-05-01T10:05:00Z"}


def test_an_unknown_time_zone_makes_the_loop_not_ready_and_stalled() -> None:
    d = decide_loop(observed(schedule="* * * * *", timeZone="Nowhere/Atlantis"))
    assert d.start is None
    assert ready(d.status)["status"] == "False"
    assert ready(d.status)["reason"] == "InvalidTimeZone"
    assert "Nowhere/Atlantis" in ready(d.status)["message"]
    stalled = next(c for c in d.status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "InvalidTimeZone")
    assert d.status["nextScheduleTime"] is None


def test_a_loop_without_schedule_is_ready_and_never_requeued() -> None:
    d = decide_loop(observed())
    assert d.start is None
    assert d.requeue_after is None
    assert ready(d.status)["status"] == "True"
    assert d.status["observedGeneration"] == 4
    assert [c["type"] for c in d.status["conditions"]] == ["Ready"]


def test_ready_keeps_its_transition_time_while_its_status_holds() -> None:
    since = "2026-04-01T00:00:00Z"
    previous = {
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Scheduled", "lastTransitionTime": since}
        ]
    }
    same = decide_loop(observed(schedule="*/5 * * * *", status=previous))
    assert ready(same.status)["lastTransitionTime"] == since
    flipped = decide_loop(observed(schedule="* * * * *", timeZone="No/Where", status=previous))
    assert ready(flipped.status)["lastTransitionTime"] == "2026-05-01T10:05:03Z"


# --- status from runs --------------------------------------------------------------------------


def test_status_shows_the_newest_run_the_last_success_and_the_active_runs() -> None:
    runs = [
        run("a", "Succeeded", "2026-05-01T08:00:00Z", "2026-05-01T08:10:00Z"),
        run("b", "Failed", "2026-05-01T09:00:00Z", "2026-05-01T09:10:00Z"),
        run("c", "Running", "2026-05-01T10:00:00Z"),
        run("d", None, "2026-05-01T10:01:00Z", owned=False),
        run("e", "Halted", "2026-05-01T07:00:00Z", teardown={"state": "Running"}),
    ]
    s = decide_loop(observed(runs)).status
    assert (s["lastRun"], s["phase"], s["lastRunTime"]) == ("d", "Pending", "2026-05-01T10:01:00Z")
    assert (s["lastSuccessfulRun"], s["lastSuccessfulTime"]) == ("a", "2026-05-01T08:10:00Z")
    assert s["active"] == ["e", "c", "d"]  # tearing down counts as active, oldest first


def test_fields_about_pruned_runs_keep_their_last_value() -> None:
    previous = {"lastSuccessfulRun": "old", "lastSuccessfulTime": "2026-05-01T09:30:00Z"}
    s = decide_loop(observed([run("b", "Failed")], status=previous)).status
    assert "lastSuccessfulRun" not in status_patch(previous, s)
    assert s["active"] is None


def test_the_status_patch_holds_only_what_changed_and_never_triggers() -> None:
    d = decide_loop(observed([run("a")]))
    assert "triggers" not in d.status
    assert status_patch(d.status, d.status) == {}
    changed = status_patch({**d.status, "phase": "Running"}, d.status)
    assert changed == {"phase": "Succeeded"}


# --- pruning -----------------------------------------------------------------------------------


def finished_runs() -> list[dict[str, Any]]:
    return [
        run(f"s{i}", "Succeeded", f"2026-05-01T0{i}:00:00Z", f"2026-05-01T0{i}:30:00Z")
        for i in range(1, 6)
    ] + [
        run("f1", "Failed", "2026-05-01T01:10:00Z", "2026-05-01T01:20:00Z"),
        run("f2", "Halted", "2026-05-01T02:10:00Z", "2026-05-01T02:20:00Z"),
        run("f3", "Failed", "2026-05-01T03:10:00Z", "2026-05-01T03:20:00Z"),
    ]


def test_history_limits_delete_the_oldest_finished_runs_of_each_kind() -> None:
    spec = loop_spec(successfulRunsHistoryLimit=2, failedRunsHistoryLimit=1)
    runs = [ObservedLoopRun.from_json(r, LOOP_UID) for r in finished_runs()]
    # Halted counts as failed: f1 and f2 go, f3 stays; s1..s3 go, s4 and s5 stay; oldest first
    assert compute_pruning(spec, runs) == ("f1", "s1", "f2", "s2", "s3")


def test_a_limit_of_zero_deletes_every_finished_run_but_not_active_ones() -> None:
    spec = loop_spec(successfulRunsHistoryLimit=0, failedRunsHistoryLimit=0)
    runs = [
        ObservedLoopRun.from_json(r, LOOP_UID)
        for r in [
            run("done"),
            run("busy", "Running"),
            run("halting", "Halted", teardown={"state": "Running"}),
        ]
    ]
    assert compute_pruning(spec, runs) == ("done",)


def test_runs_the_loop_does_not_own_are_never_deleted_nor_counted() -> None:
    spec = loop_spec(successfulRunsHistoryLimit=1, failedRunsHistoryLimit=1)
    runs = [
        ObservedLoopRun.from_json(r, LOOP_UID)
        for r in [
            run("applied-1", created="2026-05-01T01:00:00Z", owned=False),
            run("applied-2", created="2026-05-01T02:00:00Z", owned=False),
            run("mine", created="2026-05-01T03:00:00Z"),
        ]
    ]
    assert compute_pruning(spec, runs) == ()
    other = run("other-loop", created="2026-05-01T00:00:00Z")
    other["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    assert not ObservedLoopRun.from_json(other, LOOP_UID).owned


def test_a_run_whose_iterations_are_not_all_in_memory_waits_before_it_is_deleted() -> None:
    spec = loop_spec(successfulRunsHistoryLimit=0)
    iterations = [{"number": 1, "decision": "iterate"}, {"number": 2, "decision": "pass"}]
    pending = run("pending", iterations=iterations, memoryRecordedThrough=1)
    recorded = run("recorded", iterations=iterations, memoryRecordedThrough=2)
    placed = run("placed", memoryRecordedThrough=0, placedPods=[{"name": "p"}])
    runs = [ObservedLoopRun.from_json(r, LOOP_UID) for r in (pending, recorded, placed)]
    assert compute_pruning(spec, runs) == ("recorded",)


def test_the_pass_deletes_what_pruning_selects() -> None:
    d = decide_loop(
        observed(finished_runs(), successfulRunsHistoryLimit=4, failedRunsHistoryLimit=3)
    )
    assert d.delete == ("s1",)
