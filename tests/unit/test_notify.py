"""Which notifications a status write causes (kloop.core.notify): one per change, never two."""

from __future__ import annotations

from typing import Any

import pytest

from kloop.adapters.notify import _mask
from kloop.api.loop import NotifyEvent, NotifyTarget
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
    TargetState,
)
from kloop.core.notify import (
    RunRef,
    backoff_delay,
    compute_notifications,
    retryable_status,
    select,
)

RUN = RunRef(namespace="team", name="rollout-1", uid="u-1", loop="rollout")
NOW = "2026-01-01T00:00:00Z"


def status(
    phase: Phase | None,
    a: str = "Pending",
    b: str = "Pending",
    *,
    stage: str = "a",
    b_cluster: TargetState = TargetState.PENDING,
    b_iterations: int = 0,
    reason: str | None = None,
    halt_reason: str | None = None,
    iterations: list[IterationRecord] | None = None,
) -> LoopRunStatus:
    """A two-stage run (a: local, b: local) in the given states."""
    return LoopRunStatus(
        phase=phase,
        stage=stage,
        halt_reason=halt_reason,
        message="the latest decision",
        stages=[
            StageProgress(
                name="a",
                state=StageState(a),
                clusters=[
                    ClusterProgress(
                        name="local",
                        state=TargetState.PASSED if a == "Passed" else TargetState.RUNNING,
                        iterations=3,
                        last_verdict=RecordedVerdict.PASS,
                    )
                ],
            ),
            StageProgress(
                name="b",
                state=StageState(b),
                clusters=[
                    ClusterProgress(
                        name="local", state=b_cluster, iterations=b_iterations, reason=reason
                    )
                ],
            ),
        ],
        iterations=iterations or [],
    )


def events(before: LoopRunStatus, after: LoopRunStatus) -> list[tuple[str, str]]:
    return [(n.event.value, n.key) for n in compute_notifications(RUN, before, after, NOW)]


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param(
            status(None),
            status(Phase.RUNNING, "Running"),
            [("stage-started", "u-1/stage-started/a")],
            id="first stage starts",
        ),
        pytest.param(
            status(Phase.RUNNING, "Running"),
            status(Phase.AWAITING_APPROVAL, "Passed", "AwaitingApproval", stage="b"),
            [("awaiting-approval", "u-1/awaiting-approval/b")],
            id="next stage waits for approval",
        ),
        pytest.param(
            status(Phase.AWAITING_APPROVAL, "Passed", "AwaitingApproval", stage="b"),
            status(Phase.RUNNING, "Passed", "Running", stage="b"),
            [("stage-started", "u-1/stage-started/b")],
            id="approved stage starts",
        ),
        pytest.param(
            status(Phase.RUNNING, "Running"),
            status(Phase.RUNNING, "Passed", "Running", stage="b"),
            [("stage-started", "u-1/stage-started/b")],
            id="next stage starts without approval",
        ),
        pytest.param(
            status(Phase.RUNNING, "Passed", "Running", stage="b"),
            status(Phase.SUCCEEDED, "Passed", "Passed", stage="b"),
            [("succeeded", "u-1/succeeded/b")],
            id="run succeeds",
        ),
        pytest.param(
            status(Phase.RUNNING, "Running"),
            status(Phase.HALTED, "Halted", "Halted", halt_reason="DriftExceeded"),
            [("halted", "u-1/halted/a")],
            id="run halts, pending stages do not start",
        ),
        pytest.param(
            status(Phase.RUNNING, "Running"),
            status(Phase.FAILED, "Failed", halt_reason="UntrustedPod"),
            [("failed", "u-1/failed/a")],
            id="run fails",
        ),
        pytest.param(
            status(Phase.RUNNING, "Passed", "Running", stage="b", b_iterations=1),
            status(
                Phase.PAUSED,
                "Passed",
                "Running",
                stage="b",
                b_cluster=TargetState.PAUSED,
                b_iterations=1,
                reason="Inconclusive",
            ),
            [("paused", "u-1/paused/b/1")],
            id="inconclusive verdict pauses the stage",
        ),
        pytest.param(
            status(Phase.PENDING),
            status(Phase.RUNNING, "Passed", "Passed", stage="b"),
            [
                ("stage-started", "u-1/stage-started/a"),
                ("stage-started", "u-1/stage-started/b"),
            ],
            id="stages that started and passed between two writes still notify",
        ),
    ],
)
def test_each_state_change_gives_its_event(
    before: LoopRunStatus, after: LoopRunStatus, expected: list[tuple[str, str]]
) -> None:
    assert events(before, after) == expected


@pytest.mark.parametrize(
    "same",
    [
        status(Phase.RUNNING, "Running"),
        status(Phase.AWAITING_APPROVAL, "Passed", "AwaitingApproval", stage="b"),
        status(Phase.PAUSED, "Passed", "Running", stage="b", b_cluster=TargetState.PAUSED),
        status(Phase.SUCCEEDED, "Passed", "Passed", stage="b"),
        status(Phase.HALTED, "Halted", "Halted", halt_reason="Aborted"),
    ],
    ids=lambda s: str(s.phase),
)
def test_status_written_twice_with_the_same_phase_notifies_nothing(same: LoopRunStatus) -> None:
    assert events(same, same.model_copy(deep=True)) == []


def test_progress_within_a_phase_notifies_nothing() -> None:
    before = status(Phase.RUNNING, "Running")
    after = status(Phase.RUNNING, "Running")
    after.stages[0].clusters[0].iterations = 4
    after.message = "iteration 4"
    assert events(before, after) == []


def test_pausing_again_after_a_resume_is_a_new_event_with_a_new_key() -> None:
    running = status(Phase.RUNNING, "Passed", "Running", stage="b", b_iterations=1)
    paused = status(
        Phase.PAUSED, "Passed", "Running", stage="b", b_cluster=TargetState.PAUSED, b_iterations=1
    )
    resumed = status(Phase.RUNNING, "Passed", "Running", stage="b", b_iterations=2)
    paused_again = status(
        Phase.PAUSED, "Passed", "Running", stage="b", b_cluster=TargetState.PAUSED, b_iterations=2
    )
    first = events(running, paused)
    assert events(paused, resumed) == [], "resuming is no event (the stage was running)"
    second = events(resumed, paused_again)
    assert [e for e, _ in first + second] == ["paused", "paused"]
    assert first[0][1] != second[0][1]


def test_a_whole_staged_run_notifies_each_event_once_in_order() -> None:
    timeline = [
        status(None),
        status(Phase.PENDING),
        status(Phase.RUNNING, "Running"),
        status(Phase.RUNNING, "Running"),
        status(Phase.AWAITING_APPROVAL, "Passed", "AwaitingApproval", stage="b"),
        status(Phase.AWAITING_APPROVAL, "Passed", "AwaitingApproval", stage="b"),
        status(Phase.RUNNING, "Passed", "Running", stage="b"),
        status(Phase.SUCCEEDED, "Passed", "Passed", stage="b"),
        status(Phase.SUCCEEDED, "Passed", "Passed", stage="b"),
    ]
    sent = [e for old, new in zip(timeline, timeline[1:], strict=False) for e in events(old, new)]
    assert [e for e, _ in sent] == [
        "stage-started",
        "awaiting-approval",
        "stage-started",
        "succeeded",
    ]
    assert len({k for _, k in sent}) == len(sent)


def _record(number: int, decided: bool) -> IterationRecord:
    return IterationRecord(
        number=number,
        stage="a",
        cluster="local",
        maker=MakerRecord(outcome=Outcome.CHANGED),
        checkers=[CheckerRecord(name="greeting", verdict=RecordedVerdict.FAIL)] if decided else [],
        decision=IterationDecision.ITERATE if decided else None,
        why="missing comma" if decided else None,
    )


def test_iteration_events_follow_the_iteration_records() -> None:
    one_open = status(Phase.RUNNING, "Running", iterations=[_record(1, False)])
    one_done = status(Phase.RUNNING, "Running", iterations=[_record(1, True)])
    two_done = status(Phase.RUNNING, "Running", iterations=[_record(1, True), _record(2, True)])
    assert events(status(Phase.RUNNING, "Running"), one_open) == [
        ("iteration-started", "u-1/iteration-started/a/local/1")
    ]
    assert events(one_open, one_done) == [
        ("iteration-finished", "u-1/iteration-finished/a/local/1")
    ]
    assert events(one_done, two_done) == [
        ("iteration-started", "u-1/iteration-started/a/local/2"),
        ("iteration-finished", "u-1/iteration-finished/a/local/2"),
    ]
    assert events(two_done, two_done) == []
    finished = compute_notifications(RUN, one_open, one_done, NOW)[0].payload
    assert finished["decision"] == "iterate"
    assert finished["verdicts"] == [{"checker": "greeting", "verdict": "fail"}]


def test_payload_names_the_run_stage_clusters_verdicts_and_reason() -> None:
    before = status(Phase.RUNNING, "Passed", "Running", stage="b", b_iterations=2)
    after = status(
        Phase.HALTED,
        "Passed",
        "Halted",
        stage="b",
        b_cluster=TargetState.HALTED,
        b_iterations=2,
        reason="DriftExceeded",
        halt_reason="DriftExceeded",
    )
    (note,) = compute_notifications(RUN, before, after, NOW)
    payload: dict[str, Any] = note.payload
    assert payload["event"] == "halted"
    assert (payload["namespace"], payload["run"], payload["loop"]) == (
        "team",
        "rollout-1",
        "rollout",
    )
    assert (payload["stage"], payload["phase"], payload["reason"]) == (
        "b",
        "Halted",
        "DriftExceeded",
    )
    assert payload["clusters"] == [
        {
            "name": "local",
            "state": "Halted",
            "iterations": 2,
            "lastVerdict": None,
            "reason": "DriftExceeded",
        }
    ]
    assert payload["stages"] == [{"name": "a", "state": "Passed"}, {"name": "b", "state": "Halted"}]
    assert payload["idempotencyKey"] == note.key
    assert payload["time"] == NOW


def test_each_target_gets_only_the_events_it_asked_for() -> None:
    def target(name: str, wanted: list[str]) -> NotifyTarget:
        return NotifyTarget.model_validate(
            {"name": name, "urlSecretRef": {"name": "hook", "key": "url"}, "events": wanted}
        )

    notes = compute_notifications(
        RUN, status(Phase.RUNNING, "Running"), status(Phase.SUCCEEDED, "Passed", "Passed"), NOW
    )
    chosen = select(
        [target("ops", ["succeeded", "failed"]), target("chat", ["stage-started"])], notes
    )
    assert [(t.name, n.event) for t, n in chosen] == [
        ("ops", NotifyEvent.SUCCEEDED),
        ("chat", NotifyEvent.STAGE_STARTED),
    ]


def test_retries_back_off_exponentially_up_to_a_cap() -> None:
    assert [backoff_delay(n, 1.0, 16.0) for n in range(1, 8)] == [1, 2, 4, 8, 16, 16, 16]


@pytest.mark.parametrize(
    ("code", "retry"), [(500, True), (503, True), (429, True), (400, False), (404, False)]
)
def test_only_server_errors_and_throttling_are_retried(code: int, retry: bool) -> None:
    assert retryable_status(code) is retry


def test_messages_never_show_any_piece_of_the_webhook_url() -> None:
    url = "https://hooks.example.test/services/T0AB/B0CD/s3cr3tT0ken?sig=abcd1234"
    text = (
        "ConnectError: cannot connect to hooks.example.test:443 for "
        f"{url} (path /services/T0AB/B0CD/s3cr3tT0ken)"
    )
    masked = _mask(text, url)
    for piece in ("hooks.example.test", "s3cr3tT0ken", "abcd1234", "T0AB", "B0CD"):
        assert piece not in masked
    assert masked.startswith("ConnectError: cannot connect to")
