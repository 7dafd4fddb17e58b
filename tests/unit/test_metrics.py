from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from kloop.metrics import record_transition
from tests.unit.builders import Simulation, checker_pod, loop_spec, maker_ok, maker_pod, verdict

pytestmark = pytest.mark.unit


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_follow_status_transitions() -> None:
    ns, loop = "metrics-ns", "metrics-loop"
    sim = Simulation(loop_spec(budget={"maxIterations": 2}))
    steps = []
    before = sim.status
    steps.append((before, sim.step().status))
    steps.append((sim.status, sim.finish(maker_pod(1), maker_ok(tokens=7)).status))
    steps.append((sim.status, sim.finish(checker_pod(1), verdict("fail", "x")).status))
    steps.append((sim.status, sim.finish(maker_pod(2), maker_ok(tokens=5)).status))
    steps.append((sim.status, sim.finish(checker_pod(2), verdict("fail", "y")).status))
    for old, new in steps:
        record_transition(ns, loop, old, new)
    record_transition(ns, loop, sim.status, sim.status)  # an idle pass counts nothing
    assert value("kloop_iterations_total", namespace=ns, loop=loop) == 2
    assert value("kloop_tokens_total", namespace=ns, loop=loop) == 12
    fails = value("kloop_verdicts_total", namespace=ns, loop=loop, checker="tests", verdict="fail")
    assert fails == 2
    halted = value(
        "kloop_runs_finished_total", namespace=ns, loop=loop, phase="Halted", reason="MaxIterations"
    )
    assert halted == 1
    assert value("kloop_run_duration_seconds_count", namespace=ns, loop=loop) == 1
