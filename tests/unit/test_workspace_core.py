"""Workspaces as worktrees, through the pure core: branches, where each maker starts, what the
push proves, what checkers grade and what the next maker is told (issue 18)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from kloop.api.looprun import Phase, TargetState
from kloop.core import names
from kloop.core.model import Checkout, ContainerEnd, CreatePod, ObservedPod, RecordEvent
from kloop.core.workspace import CLONE_CONTAINER, PUSH_CONTAINER
from tests.unit.builders import (
    Simulation,
    checker_pod,
    loop_spec,
    maker_ok,
    maker_pod,
    succeeded,
    verdict,
)

pytestmark = pytest.mark.unit

URL = "http://git.example/team/app.git"
BASE = "a" * 40
C1 = "b" * 40
C2 = "c" * 40


def git(push: bool = True, **fields: Any) -> dict[str, Any]:
    return {"git": {"url": URL, "ref": "main", "push": push, **fields}}


def requested(sim: Simulation) -> dict[str, CreatePod]:
    assert sim.last is not None
    return {a.pod.name: a for a in sim.last.actions if isinstance(a, CreatePod)}


def checkout_of(sim: Simulation, pod: str) -> Checkout | None:
    return requested(sim)[pod].pod.workspace


def ended(
    name: str,
    result: dict[str, Any],
    base: str = BASE,
    pushed: dict[str, Any] | None = None,
    push: bool = True,
) -> ObservedPod:
    """A maker pod that ended, with what kloop's clone and push containers reported."""
    containers = {CLONE_CONTAINER: ContainerEnd(True, 0, json.dumps({"v": 1, "commit": base}))}
    if push:
        report = json.dumps({"v": 1, **(pushed or {})}) if pushed is not None else None
        containers[PUSH_CONTAINER] = ContainerEnd(True, 0, report)
    return replace(succeeded(name, result), kloop_containers=containers)


def finish(sim: Simulation, pod: ObservedPod) -> None:
    sim.now += timedelta(seconds=5)
    sim.pods[pod.name] = replace(pod, created_at=sim.now)
    sim.step()


def events(sim: Simulation, reason: str) -> list[str]:
    assert sim.last is not None
    return [
        a.message for a in sim.last.actions if isinstance(a, RecordEvent) and a.reason == reason
    ]


def test_branch_names_carry_run_stage_cluster_and_iteration() -> None:
    assert names.branch("r", "prod", "eu-1", 3) == "kloop/r/prod-eu-1-i3"


def test_first_maker_checks_out_ref_on_its_own_branch_and_status_says_so() -> None:
    sim = Simulation(loop_spec(workspace=git()))
    sim.step()
    checkout = checkout_of(sim, maker_pod(1))
    assert checkout == Checkout("kloop/r/default-local-i1", "main", push=True)
    record = sim.status.iterations[0].workspace
    assert record is not None
    assert (record.branch, record.started_from, record.commit) == (checkout.branch, "main", None)


def test_checkers_grade_exactly_the_pushed_commit_read_only() -> None:
    sim = Simulation(loop_spec(workspace=git()))
    sim.step()
    finish(sim, ended(maker_pod(1), maker_ok(), pushed={"commit": C1}))
    record = sim.status.iterations[0].workspace
    assert record is not None and (record.base, record.commit) == (BASE, C1)
    checkout = checkout_of(sim, checker_pod(1))
    assert checkout == Checkout(
        "kloop/r/default-local-i1", "kloop/r/default-local-i1", commit=C1, read_only=True, base=BASE
    ), "the base lets the kit's checker diff exactly the maker's work"


def test_the_next_iteration_starts_from_the_previous_pushed_commit() -> None:
    sim = Simulation(loop_spec(workspace=git()))
    sim.step()
    finish(sim, ended(maker_pod(1), maker_ok(), pushed={"commit": C1}))
    sim.finish(checker_pod(1), verdict("fail", "not yet"))
    checkout = checkout_of(sim, maker_pod(2))
    assert checkout == Checkout(
        "kloop/r/default-local-i2", "kloop/r/default-local-i1", commit=C1, push=True
    )
    feedback = json.loads(requested(sim)[maker_pod(2)].pod.files["feedback.json"])
    assert feedback["workspace"]["commit"] == C1
    assert feedback["workspace"]["note"] is None


def test_without_push_every_maker_starts_from_ref_and_checkers_get_no_checkout() -> None:
    sim = Simulation(loop_spec(workspace=git(push=False)))
    sim.step()
    assert checkout_of(sim, maker_pod(1)) == Checkout("kloop/r/default-local-i1", "main")
    finish(sim, ended(maker_pod(1), maker_ok(), push=False))
    assert sim.status.iterations[0].workspace.base == BASE  # type: ignore[union-attr]
    assert checkout_of(sim, checker_pod(1)) is None
    sim.finish(checker_pod(1), verdict("fail"))
    assert checkout_of(sim, maker_pod(2)) == Checkout("kloop/r/default-local-i2", "main")


def test_changed_without_a_new_commit_is_told_to_the_next_maker() -> None:
    sim = Simulation(loop_spec(workspace=git()))
    sim.step()
    finish(sim, ended(maker_pod(1), maker_ok(), pushed={"commit": BASE}))
    record = sim.status.iterations[0].workspace
    assert record is not None and record.note and "pushed no new commit" in record.note
    assert events(sim, "NoNewCommit"), "said aloud, as a warning Event"
    assert sim.status.iterations[0].maker.outcome == "changed"  # type: ignore[union-attr]
    sim.finish(checker_pod(1), verdict("fail", "file missing"))
    feedback = json.loads(requested(sim)[maker_pod(2)].pod.files["feedback.json"])
    assert "commit your changes" in feedback["workspace"]["note"]


def test_nothing_to_do_without_a_new_commit_is_no_news() -> None:
    sim = Simulation(loop_spec(workspace=git()))
    sim.step()
    nothing = {"v": 1, "outcome": "nothing-to-do"}
    finish(sim, ended(maker_pod(1), nothing, pushed={"commit": BASE}))
    assert sim.status.iterations[0].workspace.note is None  # type: ignore[union-attr]
    assert not events(sim, "NoNewCommit")


@pytest.mark.parametrize(
    ("error", "halt"),
    [("PushRejected", "PushRejected"), ("GitRemoteUnavailable", "GitRemoteUnavailable")],
)
def test_a_failed_push_is_an_error_outcome_with_its_reason(error: str, halt: str) -> None:
    sim = Simulation(loop_spec(workspace=git()))
    sim.step()
    pushed = {"commit": C1, "error": error, "message": "! [rejected] (fetch first)"}
    finish(sim, ended(maker_pod(1), maker_ok(), pushed=pushed))
    maker = sim.status.iterations[0].maker
    assert maker is not None and (maker.outcome, maker.error_reason) == ("error", error)
    assert "push of kloop/r/default-local-i1 failed" in maker.summary
    assert (sim.status.phase, sim.status.halt_reason) == (Phase.FAILED, halt)
    assert sim.status.stages[0].clusters[0].state is TargetState.FAILED
    assert events(sim, error), "an Event with the push's reason"
    assert checker_pod(1) not in requested(sim), "nothing unpushed is graded"


def test_a_push_that_never_reported_is_an_error_not_a_success() -> None:
    sim = Simulation(loop_spec(workspace=git()))
    sim.step()
    finish(sim, ended(maker_pod(1), maker_ok(), pushed=None))
    maker = sim.status.iterations[0].maker
    assert maker is not None and maker.error_reason == "PushFailed"
    assert "terminationGracePeriodSeconds" in maker.summary


def test_a_failed_clone_fails_the_maker_with_the_clone_reason() -> None:
    sim = Simulation(loop_spec(workspace=git()))
    sim.step()
    report = {"v": 1, "error": "GitRemoteUnavailable", "message": "Failed to connect to git"}
    pod = ObservedPod(
        maker_pod(1),
        "Failed",
        reason="PodInitializing",
        uid=f"uid-{maker_pod(1)}",
        kloop_containers={
            CLONE_CONTAINER: ContainerEnd(True, 1, json.dumps(report)),
            PUSH_CONTAINER: ContainerEnd(False),
        },
    )
    finish(sim, pod)
    maker = sim.status.iterations[0].maker
    assert maker is not None and maker.error_reason == "GitRemoteUnavailable"
    assert "workspace checkout failed: Failed to connect to git" in maker.summary
    assert sim.status.halt_reason == "GitRemoteUnavailable"


def test_parallel_targets_never_share_a_branch_and_each_continues_its_own() -> None:
    stage = {"name": "prod", "clusters": ["a", "b"]}
    sim = Simulation(loop_spec(workspace=git(), stages=[stage]), clusters={"a": {}, "b": {}})
    sim.step()
    first = {n: checkout_of(sim, f"r-s0-{n}-i{i}-maker") for n, i in (("a", 1), ("b", 2))}
    assert {n: c.branch for n, c in first.items() if c} == {
        "a": "kloop/r/prod-a-i1",
        "b": "kloop/r/prod-b-i2",
    }
    finish(sim, ended("r-s0-a-i1-maker", maker_ok(), pushed={"commit": C1}))
    finish(sim, ended("r-s0-b-i2-maker", maker_ok(), pushed={"commit": C2}))
    sim.finish("r-s0-b-i2-check-tests", verdict("fail"))
    assert checkout_of(sim, "r-s0-b-i3-maker") == Checkout(
        "kloop/r/prod-b-i3", "kloop/r/prod-b-i2", commit=C2, push=True
    ), "b continues from b's branch, not a's"


def test_the_maker_is_recorded_only_once_kloops_push_has_reported() -> None:
    sim = Simulation(loop_spec(workspace=git()))
    sim.step()
    done = ended(maker_pod(1), maker_ok(), pushed={"commit": C1})
    still_pushing = replace(
        done, kloop_containers={**done.kloop_containers, PUSH_CONTAINER: ContainerEnd(False)}
    )
    finish(sim, still_pushing)
    assert sim.status.iterations[0].maker is None, "Succeeded, but the sidecar still pushes"
    assert sim.last is not None and sim.last.requeue_after == 2.0
    finish(sim, done)
    assert sim.status.iterations[0].workspace.commit == C1  # type: ignore[union-attr]
    assert checker_pod(1) in requested(sim)
