"""The pure decision core (``kloop.core.decide.decide``) timed with timeit, no cluster."""

from __future__ import annotations

import timeit
from dataclasses import dataclass
from datetime import timedelta

from tests.unit.builders import (
    Simulation,
    checker_pod,
    container,
    loop_spec,
    maker_ok,
    maker_pod,
    observe,
    verdict,
)

from e2e.bench.stats import HEADER, row
from kloop.api.loop import LoopSpec
from kloop.core.decide import decide
from kloop.core.model import ObservedRun

DECIDE_REPEATS = 7  # timeit batches per case; each batch runs >= 0.2 s (timeit.autorange)
WIDE_CHECKERS = 8
MAX_ITERATION_RECORDS = 50  # the most spec.statusIterations allows (kloop/api/loop.py)


def fresh_run() -> ObservedRun:
    """A LoopRun just created: decide starts iteration 1 and asks for the maker pod."""
    return observe(spec=loop_spec())


def wide_spec() -> LoopSpec:
    checkers = [
        {"name": f"c{i}", "template": {"spec": {"containers": [container("check:1", "c")]}}}
        for i in range(WIDE_CHECKERS)
    ]
    return loop_spec(
        checkers=checkers,
        budget={"maxIterations": 1000},
        statusIterations=MAX_ITERATION_RECORDS,
    )


def long_run() -> ObservedRun:
    """Iteration 50 of a run with 8 checkers, waiting on its checker pods.

    status.iterations holds MAX_ITERATION_RECORDS records (its bound) and the pods of every
    iteration are observed, as the operator lists them by label: the largest steady-state input.
    Built by driving decide() like the operator does, so the state is one decide really produces.
    """
    spec = wide_spec()
    sim = Simulation(spec)
    sim.step()
    for i in range(1, MAX_ITERATION_RECORDS + 1):
        sim.finish(maker_pod(i), maker_ok(tokens=10, summary=f"attempt {i}"))
        if i == MAX_ITERATION_RECORDS:
            break
        for checker in spec.checkers:
            sim.finish(checker_pod(i, checker.name), verdict("fail", f"{checker.name} not yet"))
    assert len(sim.status.iterations) == MAX_ITERATION_RECORDS
    return observe(
        sim.status,
        spec,
        dict(sim.pods),
        sim.now + timedelta(seconds=1),
        memory=frozenset(sim.memory),
    )


@dataclass(frozen=True)
class DecideResult:
    label: str
    records: int
    pods: int
    actions: int
    per_call: list[float]  # seconds, one per timeit batch


def bench_decide(label: str, obs: ObservedRun) -> DecideResult:
    """Time decide(obs) in timeit batches (gc off, as timeit does); per-call seconds."""
    first = decide(obs)  # warm-up, and what the call decides
    timer = timeit.Timer(lambda: decide(obs))
    number, _ = timer.autorange()
    batches = timer.repeat(repeat=DECIDE_REPEATS, number=number)
    return DecideResult(
        label,
        len(obs.status.iterations),
        len(obs.pods),
        len(first.actions),
        [t / number for t in batches],
    )


def cases() -> list[DecideResult]:
    return [
        bench_decide("(a) fresh run", fresh_run()),
        bench_decide(
            f"(b) {MAX_ITERATION_RECORDS} recorded iterations, {WIDE_CHECKERS} checkers, "
            "waiting on pods",
            long_run(),
        ),
    ]


def section(results: list[DecideResult]) -> list[str]:
    lines = [
        "## 1. Decision core: `kloop.core.decide.decide` (no cluster)",
        "",
        "Pure function, no I/O: one observed LoopRun in, the next status and actions out. It runs",
        "on every reconcile (each pod or LoopRun event and each resync), so its cost bounds how",
        "many runs one operator can drive. Inputs are built as in `tests/unit/builders.py`.",
        f"{DECIDE_REPEATS} batches per case (timeit: gc off, each batch >= 0.2 s); per-call",
        "time is batch time / calls in the batch.",
        "",
    ]
    for r in results:
        lines += [
            f"### {r.label}",
            "",
            f"Input: {r.records} iteration record(s), {r.pods} observed pod(s); "
            f"decide returns {r.actions} action(s).",
            "",
            *HEADER,
            row("µs per call", r.per_call, ".1f", 1e6),
            "",
        ]
    return lines
