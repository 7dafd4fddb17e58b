"""Status and memory stay within the API's limits; a run's memory is a fact on the run."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from kloop.adapters.memory import configmap
from kloop.api.looprun import CheckerRecord, IterationRecord, LoopRunStatus, MakerRecord, Phase
from kloop.core.decide import decide
from kloop.core.history import bound_status
from kloop.core.memory import (
    LOG_KEY,
    MEMORY_KEY,
    RUNS_TRACKED,
    append_entry,
    appended_through,
    data_size,
    empty_log,
    memory_entry,
    recorded_through,
    render_data,
    render_markdown,
)
from kloop.core.model import AppendMemory, CreatePod, Decision, Role

from .builders import Simulation, container, loop_spec, observe, succeeded

pytestmark = pytest.mark.unit

STATUS_LIMIT = 256 * 1024
CHECKERS = 16  # LoopSpec.checkers max_length
REASONS = 20  # CheckerResult.reasons max_length
REASON_CHARS = 1024  # CheckerResult.reasons[] max_length
SUMMARY_CHARS = 2048  # MakerResult.summary max_length
ITERATIONS = 1000  # Budget.maxIterations le


def _max_spec(status_iterations: int, iterations: int) -> Any:
    checkers = [
        {
            "name": f"checker-{i:02d}-".ljust(63, "x"),
            "template": {"spec": {"containers": [container("check:1", "c")]}},
        }
        for i in range(CHECKERS)
    ]
    return loop_spec(
        checkers=checkers,
        budget={"maxIterations": iterations},
        statusIterations=status_iterations,
    )


def _max_maker(i: int, char: str) -> dict[str, Any]:
    summary = f"attempt {i} " + char * SUMMARY_CHARS
    return {"v": 1, "outcome": "changed", "summary": summary[:SUMMARY_CHARS], "tokens": 1}


def _max_verdict(i: int, char: str) -> str:
    reasons = [(f"#{i}.{r} " + char * REASON_CHARS)[:REASON_CHARS] for r in range(REASONS)]
    return json.dumps({"v": 1, "verdict": "fail", "reasons": reasons})


def _pods(d: Decision, role: Role) -> list[str]:
    return [a.pod.name for a in d.actions if isinstance(a, CreatePod) and a.pod.role is role]


@pytest.mark.parametrize(
    ("status_iterations", "iterations", "char"),
    [
        (10, ITERATIONS, "x"),  # the default, for the longest run the budget allows
        # the most records; "ü" is escaped as \u00fc (6 bytes); past 52 iterations nothing grows
        (50, 60, "ü"),
    ],
)
def test_trust_3_status_stays_bounded_at_the_api_maximum(
    status_iterations: int, iterations: int, char: str
) -> None:
    """16 checkers x 20 reasons x 1024 chars and 2048-char summaries, failing until the cap."""
    sim = Simulation(_max_spec(status_iterations, iterations))
    d = sim.step()
    sizes = []
    for i in range(1, iterations + 1):
        (maker,) = _pods(d, Role.MAKER)
        sim.now += timedelta(seconds=1)
        sim.pods = {maker: succeeded(maker, _max_maker(i, char), sim.now)}  # old pods do not matter
        d = sim.step()
        sizes.append(len(json.dumps(sim.status.to_kube())))
        checkers = _pods(d, Role.CHECKER)
        assert len(checkers) == CHECKERS
        sim.now += timedelta(seconds=1)
        result = _max_verdict(i, char)
        for name in checkers:
            sim.pods[name] = succeeded(name, result, sim.now)
        d = sim.step()
        sizes.append(len(json.dumps(sim.status.to_kube())))
        assert max(sizes[-2:]) < STATUS_LIMIT, f"status is {max(sizes)} bytes at iteration {i}"
    d = sim.step()  # one more pass folds what the last one appended to memory
    status = sim.status
    assert (status.phase, status.halt_reason) == (Phase.HALTED, "MaxIterations")
    assert status.iteration == iterations
    assert len(status.iterations) <= status_iterations + 2
    earlier = status.earlier_iterations
    assert earlier is not None
    assert earlier.iterations + len(status.iterations) == iterations, "nothing is lost"
    assert earlier.failed == earlier.iterations and len(earlier.last_failures) == 5
    assert sim.memory == set(range(1, iterations + 1)), "every iteration reached memory"
    assert all(r.truncated for r in status.iterations)
    assert len(status.message or "") <= 1024
    assert all(len(c.message) <= 1024 for c in status.conditions)
    assert max(sizes) < STATUS_LIMIT, max(sizes)


def test_trust_3_status_folds_only_iterations_already_in_memory() -> None:
    status = LoopRunStatus(
        iteration=6,
        iterations=[
            IterationRecord(number=n, stage="s", cluster="local", decision="iterate", why="no")
            for n in range(1, 6)
        ]
        + [IterationRecord(number=6, stage="s", cluster="local")],
    )
    bound_status(status, 1, remembered={1, 2})
    assert [r.number for r in status.iterations] == [3, 4, 5, 6]
    assert status.earlier_iterations is not None
    assert (status.earlier_iterations.iterations, status.earlier_iterations.last_iteration) == (
        2,
        2,
    )
    bound_status(status, 1, remembered={1, 2, 3, 4, 5}, protected={5})
    assert [r.number for r in status.iterations] == [5, 6], "5 feeds iteration 6: kept"


def test_trust_3_a_record_that_fits_is_left_alone() -> None:
    record = IterationRecord(
        number=1,
        stage="s",
        cluster="local",
        maker=MakerRecord(outcome="changed", summary="short"),
        checkers=[CheckerRecord(name="t", verdict="fail", reasons=["a", "b"])],
    )
    status = LoopRunStatus(iteration=1, iterations=[record.model_copy(deep=True)])
    bound_status(status, 10, remembered=set())
    assert status.iterations == [record]


def _big_entry(run_uid: str, i: int) -> dict[str, Any]:
    record = IterationRecord(
        number=i,
        stage="s",
        cluster="local",
        maker=MakerRecord(outcome="changed", summary="ß" * 2048),
        checkers=[
            CheckerRecord(name=f"c{c}", verdict="fail", reasons=["ü" * 1024] * 20)
            for c in range(16)
        ],
        decision="iterate",
        why="w" * 2000,
    )
    return memory_entry("run", run_uid, record)


LOOP = {
    "apiVersion": "kloop.dev/v1alpha1",
    "kind": "Loop",
    "metadata": {"name": "l", "uid": "loop-uid"},
}


@pytest.mark.parametrize("max_bytes", [4096, 65_536, 921_600])
def test_trust_3_memory_measured_as_written(max_bytes: int) -> None:
    """Big entries, a long multibyte goal: the ConfigMap data written stays within maxBytes."""
    goal = "🎯 goal " * 2000  # 16,000 characters, 4-byte ones among them
    log = empty_log()
    for i in range(1, 8):
        log = append_entry(log, _big_entry(f"uid-{i % 3}", i), 10, max_bytes, "l", goal)
        written = configmap("ns", "l-memory", LOOP, log, goal)["data"]
        assert written == {
            LOG_KEY: json.dumps(log, indent=1),
            MEMORY_KEY: render_markdown(log, "l", goal),
        }
        assert written == render_data(log, "l", goal)
        size = data_size(written)
        assert size == sum(len(k.encode()) + len(v.encode()) for k, v in written.items())
        assert size <= max_bytes, f"{size} bytes written with maxBytes={max_bytes}"
        assert appended_through(log, f"uid-{i % 3}") == i, "the run just appended is registered"
    assert log["summary"]["compacted"] + len(log["entries"]) == 7


def test_trust_3_memory_of_many_runs_fits_the_smallest_max_bytes() -> None:
    log = empty_log()
    for run in range(RUNS_TRACKED + 10):
        log = append_entry(log, _big_entry(f"uid-{run:03d}", 1), 200, 4096, "l", "g" * 16384)
        assert data_size(render_data(log, "l", "g" * 16384)) <= 4096
    assert appended_through(log, f"uid-{RUNS_TRACKED + 9:03d}") == 1


def _small_entry(run_uid: str, i: int) -> dict[str, Any]:
    record = IterationRecord(number=i, stage="s", cluster="local", decision="iterate", why="no")
    return memory_entry("run", run_uid, record)


def test_trust_4_memory_recorded_through_outlives_the_registry() -> None:
    log = empty_log()
    for i in (1, 2, 3):
        log = append_entry(log, _small_entry("old", i), 10, 500_000, "l", "g")
    for run in range(100):  # 100 later runs evict "old" from the registry
        log = append_entry(log, _small_entry(f"later-{run}", 1), 10, 500_000, "l", "g")
    assert appended_through(log, "old") == 0, "the registry forgot the run"
    assert recorded_through(3, log, "old") == 3, "the run's status remembers"
    assert recorded_through(None, log, "later-99") == 1, "the registry covers a missing patch"
    assert recorded_through(None, log, "old") == 0


def _finished_run(recorded: int | None) -> LoopRunStatus:
    sim = Simulation(loop_spec(budget={"maxIterations": 3}))
    d = sim.step()
    for i in (1, 2, 3):
        (maker,) = _pods(d, Role.MAKER)
        d = sim.finish(maker, {"v": 1, "outcome": "changed", "summary": f"try {i}"})
        (checker,) = _pods(d, Role.CHECKER)
        d = sim.finish(checker, {"v": 1, "verdict": "fail", "reasons": ["no"]})
    assert sim.status.phase is Phase.HALTED
    status = sim.status.model_copy(deep=True)
    status.memory_recorded_through = recorded
    return status


def test_trust_4_a_finished_run_recorded_in_status_is_never_appended_again() -> None:
    """Operator restart after 100 later runs: the registry forgot the run, its status did not."""
    log = empty_log()
    for i in (1, 2, 3):
        log = append_entry(log, _small_entry("uid-1", i), 10, 500_000, "l", "g")
    for run in range(100):
        log = append_entry(log, _small_entry(f"later-{run}", 1), 10, 500_000, "l", "g")
    status = _finished_run(recorded=3)
    through = recorded_through(status.memory_recorded_through, log, "uid-1")
    d = decide(observe(status, memory=frozenset(range(1, through + 1))))
    assert not [a for a in d.actions if isinstance(a, AppendMemory)]


def test_trust_4_what_memory_holds_becomes_a_fact_on_the_run() -> None:
    """A crash between the append and the status patch: the next pass records it from the log."""
    status = _finished_run(recorded=None)
    d = decide(observe(status, memory=frozenset({1, 2, 3})))
    assert d.status.memory_recorded_through == 3
    assert not [a for a in d.actions if isinstance(a, AppendMemory)]
