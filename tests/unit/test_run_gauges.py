"""The per-run gauges and the new histograms follow a run's status, and end with it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from kubernetes.client.rest import ApiException
from prometheus_client import REGISTRY

from kloop.api.looprun import LoopRunSpec, LoopRunStatus
from kloop.core.usage import budget_used
from kloop.metrics import RunGauges, error_reason, record_transition
from tests.unit.builders import T0, Simulation, checker_pod, loop_spec, maker_ok, maker_pod, verdict

pytestmark = pytest.mark.unit

RUN_SPEC = LoopRunSpec.model_validate({"loopRef": {"name": "l"}})


def samples(gauges: RunGauges, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in gauges.collect()
        for s in family.samples
        if s.name == name
    }


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_budget_used_is_the_fraction_of_each_effective_cap() -> None:
    spec = loop_spec(
        budget={"maxIterations": 4, "maxTokens": 100, "maxCostUSD": 1.0, "deadlineSeconds": 100}
    )
    run = LoopRunSpec.model_validate({"loopRef": {"name": "l"}, "budget": {"maxTokens": 80}})
    status = LoopRunStatus.model_validate(
        {
            "phase": "Running",
            "iteration": 1,
            "startedAt": "2026-11-25T12:00:00Z",
            "usage": {"tokens": 40, "costUSD": 0.25},
        }
    )
    used = budget_used(spec, run, status, T0 + timedelta(seconds=30))
    assert used == pytest.approx({"iterations": 0.25, "tokens": 0.5, "cost": 0.25, "deadline": 0.3})
    assert set(budget_used(loop_spec(), RUN_SPEC, status, T0)) == {"iterations"}, "only set caps"


def test_runs_by_phase_follow_the_run_and_per_run_series_end_with_it() -> None:
    gauges = RunGauges()
    spec = loop_spec(budget={"maxIterations": 2, "maxTokens": 100})
    sim = Simulation(spec)
    running = sim.step().status
    gauges.track("u1", "ns", "r", "l", spec, RUN_SPEC, running)
    phases = samples(gauges, "kloop_runs")
    key = (("loop", "l"), ("namespace", "ns"), ("phase", "Running"))
    assert phases[key] == 1
    assert phases[(("loop", "l"), ("namespace", "ns"), ("phase", "Pending"))] == 0
    caps = {dict(k)["cap"] for k in samples(gauges, "kloop_run_budget_used_ratio")}
    assert caps == {"iterations", "tokens"}
    assert len(samples(gauges, "kloop_run_last_progress_timestamp_seconds")) == 1
    sim.finish(maker_pod(1), maker_ok(tokens=60))
    sim.finish(checker_pod(1), verdict("fail", "x"))
    sim.finish(maker_pod(2), maker_ok(tokens=60))
    halted = sim.finish(checker_pod(2), verdict("fail", "y")).status
    assert halted.phase is not None and halted.phase.finished
    gauges.track("u1", "ns", "r", "l", spec, RUN_SPEC, halted)
    phases = samples(gauges, "kloop_runs")
    assert phases[(("loop", "l"), ("namespace", "ns"), ("phase", "Halted"))] == 1
    assert phases[key] == 0, "the run left Running"
    assert samples(gauges, "kloop_run_budget_used_ratio") == {}, "per-run series end with it"
    assert samples(gauges, "kloop_run_last_progress_timestamp_seconds") == {}
    gauges.forget("u1")
    assert samples(gauges, "kloop_runs") == {}, "a deleted run leaves no series"


def test_progress_time_moves_only_when_the_run_does() -> None:
    gauges = RunGauges()
    spec = loop_spec()
    sim = Simulation(spec)
    status = sim.step().status
    gauges.track("u1", "ns", "r", "l", spec, RUN_SPEC, status, now=1000.0)
    first = samples(gauges, "kloop_run_last_progress_timestamp_seconds")
    assert list(first.values()) == [T0.timestamp()], "first seen: the status's own latest time"
    gauges.track("u1", "ns", "r", "l", spec, RUN_SPEC, status, now=T0.timestamp() + 600)
    assert samples(gauges, "kloop_run_last_progress_timestamp_seconds") == first, "idle pass"
    moved = sim.finish(maker_pod(1), maker_ok()).status
    gauges.track("u1", "ns", "r", "l", spec, RUN_SPEC, moved, now=T0.timestamp() + 700)
    after = samples(gauges, "kloop_run_last_progress_timestamp_seconds")
    assert list(after.values()) == [T0.timestamp() + 700]


def test_approval_wait_is_a_gauge_while_waiting_and_observed_once_approved() -> None:
    ns, loop = "approval-ns", "approval-loop"
    spec = loop_spec(stages=[{"name": "prod", "clusters": ["local"], "requireApproval": True}])
    gauges = RunGauges()
    sim = Simulation(spec)
    waiting = sim.step().status
    gauges.track("u1", ns, "r", loop, spec, RUN_SPEC, waiting)
    (labels, seconds), *_ = samples(gauges, "kloop_run_approval_waiting_seconds").items()
    assert dict(labels)["stage"] == "prod" and seconds > 0
    assert samples(gauges, "kloop_run_last_progress_timestamp_seconds") == {}, "a human's turn"
    sim.now += timedelta(seconds=90)
    sim.kwargs["approvals"] = {"prod": "alice"}
    approved = sim.step().status
    record_transition(ns, loop, waiting, approved)
    record_transition(ns, loop, approved, approved)  # an idle pass observes nothing
    assert value("kloop_approval_wait_seconds_count", namespace=ns, loop=loop) == 1
    assert value("kloop_approval_wait_seconds_sum", namespace=ns, loop=loop) == 90
    gauges.track("u1", ns, "r", loop, spec, RUN_SPEC, approved)
    assert samples(gauges, "kloop_run_approval_waiting_seconds") == {}


def test_iteration_duration_is_observed_once_per_ended_iteration() -> None:
    ns, loop = "iteration-ns", "iteration-loop"
    sim = Simulation(loop_spec(budget={"maxIterations": 3}))
    before = sim.step().status
    steps = [(before, sim.finish(maker_pod(1), maker_ok()).status)]
    steps.append((sim.status, sim.finish(checker_pod(1), verdict("fail", "x")).status))
    steps.append((sim.status, sim.status))
    for old, new in steps:
        record_transition(ns, loop, old, new)
    assert value("kloop_iteration_duration_seconds_count", namespace=ns, loop=loop) == 1
    assert value("kloop_iteration_duration_seconds_sum", namespace=ns, loop=loop) == 10


def test_a_new_loop_starts_its_counters_at_zero() -> None:
    ns, loop = "zero-ns", "zero-loop"
    gauges = RunGauges()
    gauges.track("u1", ns, "r", loop, loop_spec(), RUN_SPEC, LoopRunStatus())
    labels = {"namespace": ns, "loop": loop, "phase": "Halted", "reason": "MaxIterations"}
    assert REGISTRY.get_sample_value("kloop_runs_finished_total", labels) == 0
    verdicts = {"namespace": ns, "loop": loop, "checker": "tests", "verdict": "fail"}
    assert REGISTRY.get_sample_value("kloop_verdicts_total", verdicts) == 0


@pytest.mark.parametrize(
    ("err", "reason"),
    [
        (ApiException(status=409), "Conflict"),
        (ApiException(status=503), "ServerError"),
        (ApiException(status=418), "ClientError"),
        (TimeoutError(), "Timeout"),
        (ConnectionRefusedError(), "Connection"),
        (ValueError("secret text"), "Other"),
    ],
)
def test_reconcile_errors_get_a_bounded_reason(err: BaseException, reason: str) -> None:
    assert error_reason(err) == reason
