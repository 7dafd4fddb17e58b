"""The outer loop over targets (issue 15), driven through the pure core: stages of clusters in
parallel, failure policies, unusable clusters, inconclusive pauses and drift as a grader."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from kloop.api.looprun import Phase, TargetState
from kloop.core.model import (
    ClusterState,
    CreatePod,
    DeletePod,
    DriftOutcome,
    MeasureDrift,
    ObservedCluster,
    ObservedPod,
    RecordEvent,
)
from tests.unit.builders import Simulation, created, loop_spec, maker_ok, verdict

pytestmark = pytest.mark.unit

FLEET = {"p1": {"tier": "prod"}, "p2": {"tier": "prod"}, "p3": {"tier": "prod"}}


def prod(**stage: Any) -> dict[str, Any]:
    return {"name": "prod", "clusterSelector": {"matchLabels": {"tier": "prod"}}, **stage}


def pod_checker(name: str, **fields: Any) -> dict[str, Any]:
    """A pod checker distinct from the maker, with extra fields (retries, placement...)."""
    container = {"name": "c", "image": "check:1", "command": ["c"]}
    return {"name": name, "template": {"spec": {"containers": [container]}}, **fields}


def mk(cluster: str, i: int, stage: int = 0) -> str:
    return f"r-s{stage}-{cluster}-i{i}-maker"


def ck(cluster: str, i: int, stage: int = 0, name: str = "tests") -> str:
    return f"r-s{stage}-{cluster}-i{i}-check-{name}"


def states(sim: Simulation, stage: int = 0) -> dict[str, str]:
    return {c.name: c.state.value for c in sim.status.stages[stage].clusters}


def test_the_clusters_of_a_stage_run_their_inner_loops_in_parallel() -> None:
    sim = Simulation(loop_spec(stages=[prod()]), clusters=FLEET)
    d = sim.step()
    assert created(d) == [mk("p1", 1), mk("p2", 2), mk("p3", 3)]
    sim.finish(mk("p2", 2), maker_ok())
    d = sim.finish(ck("p2", 2), verdict("fail", "p2 is off"))
    assert created(d) == [mk("p2", 4)], "p2 iterates on its own"
    feedback = json.loads(
        next(a.pod for a in d.actions if isinstance(a, CreatePod)).files["feedback.json"]
    )
    assert (feedback["iteration"], feedback["cluster"]) == (2, "p2")
    assert states(sim) == {"p1": "Running", "p2": "Running", "p3": "Running"}
    for cluster, i in (("p1", 1), ("p3", 3), ("p2", 4)):
        sim.finish(mk(cluster, i), maker_ok())
        d = sim.finish(ck(cluster, i), verdict("pass"))
    assert d.status.phase is Phase.SUCCEEDED
    assert d.status.clusters_passed == "3/3"
    assert [c.iterations for c in d.status.stages[0].clusters] == [1, 2, 1]


def test_max_parallel_starts_the_next_cluster_when_one_finishes() -> None:
    sim = Simulation(loop_spec(stages=[prod(maxParallel=1)]), clusters=FLEET)
    assert created(sim.step()) == [mk("p1", 1)]
    sim.finish(mk("p1", 1), maker_ok())
    d = sim.finish(ck("p1", 1), verdict("pass"))
    assert created(d) == [mk("p2", 2)]
    assert states(sim) == {"p1": "Passed", "p2": "Running", "p3": "Pending"}


def test_with_halt_a_failed_cluster_halts_the_run_and_stops_the_others() -> None:
    sim = Simulation(loop_spec(budget={"maxIterations": 1}, stages=[prod()]), clusters=FLEET)
    sim.step()
    sim.finish(mk("p1", 1), maker_ok())
    d = sim.finish(ck("p1", 1), verdict("fail", "broken"))
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "MaxIterations")
    assert "prod/p1" in (d.status.message or "")
    assert DeletePod(mk("p2", 2), "run halted") in d.actions
    assert states(sim) == {"p1": "Halted", "p2": "Halted", "p3": "Halted"}
    assert [r.decision for r in d.status.iterations] == ["halt", "halt", "halt"]


def test_with_continue_a_stage_passes_within_max_failed_clusters() -> None:
    stages = [prod(failurePolicy="Continue", maxFailedClusters=1)]
    sim = Simulation(loop_spec(budget={"maxIterations": 1}, stages=stages), clusters=FLEET)
    sim.step()
    sim.finish(mk("p1", 1), maker_ok())
    d = sim.finish(ck("p1", 1), verdict("fail", "broken"))
    assert d.status.phase is Phase.RUNNING
    for cluster, i in (("p2", 2), ("p3", 3)):
        sim.finish(mk(cluster, i), maker_ok())
        d = sim.finish(ck(cluster, i), verdict("pass"))
    assert d.status.phase is Phase.SUCCEEDED
    assert d.status.clusters_passed == "2/3"


def test_with_continue_one_failure_too_many_halts() -> None:
    stages = [prod(failurePolicy="Continue", maxFailedClusters=1)]
    sim = Simulation(loop_spec(budget={"maxIterations": 1}, stages=stages), clusters=FLEET)
    sim.step()
    for cluster, i in (("p1", 1), ("p2", 2)):
        sim.finish(mk(cluster, i), maker_ok())
        d = sim.finish(ck(cluster, i), verdict("fail", "broken"))
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "MaxIterations")


@pytest.mark.parametrize(
    ("cluster", "state", "reason"),
    [
        (None, "Unavailable", "ClusterUnavailable"),
        (
            ObservedCluster("edge", {}, ClusterState.UNAVAILABLE, "dial tcp: connection refused"),
            "Unavailable",
            "ClusterUnavailable",
        ),
        (
            ObservedCluster("edge", {}, ClusterState.NOT_ALLOWED, "allowed-namespaces is team-b"),
            "NotAllowed",
            "ClusterNotAllowed",
        ),
    ],
    ids=["no-secret", "unreachable", "not-allowed"],
)
def test_a_cluster_the_run_cannot_use_is_a_clear_target_state_and_no_pod(
    cluster: ObservedCluster | None, state: str, reason: str
) -> None:
    spec = loop_spec(stages=[{"name": "canary", "clusters": ["edge"]}])
    sim = Simulation(spec, clusters={"edge": cluster} if cluster else {})
    d = sim.step()
    assert created(d) == [], "never a local run instead, never a pass"
    progress = d.status.stages[0].clusters[0]
    assert (progress.state.value, progress.reason) == (state, reason)
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, reason)
    if cluster is not None:
        assert (cluster.message or "") in (d.status.message or "")


def test_a_selector_chooses_only_clusters_the_namespace_may_use() -> None:
    fleet = {
        **FLEET,
        "p3": ObservedCluster("p3", {"tier": "prod"}, ClusterState.NOT_ALLOWED, "team-b only"),
    }
    sim = Simulation(loop_spec(stages=[prod()]), clusters=fleet)
    sim.step()
    assert [c.name for c in sim.status.stages[0].clusters] == ["p1", "p2"]


def test_an_inconclusive_verdict_pauses_the_stage_until_a_human_resumes() -> None:
    sim = Simulation(loop_spec(stages=[prod(maxParallel=1)]), clusters=FLEET)
    sim.step()
    sim.finish(mk("p1", 1), maker_ok())
    d = sim.finish(ck("p1", 1), verdict("inconclusive", "no data yet"))
    assert d.status.phase is Phase.PAUSED
    assert states(sim)["p1"] == "Paused"
    assert "kloop.dev/resume=1" in (d.status.message or "")
    assert {c.type for c in d.status.conditions} >= {"Ready", "Paused"}
    assert created(sim.step()) == [], "nothing starts while paused"
    sim.kwargs["resumes"] = {1: "alice"}
    d = sim.step()
    assert d.status.phase is Phase.RUNNING
    assert d.status.stages[0].clusters[0].resumed_by == "alice"
    assert created(d) == [mk("p2", 2)]


def test_a_paused_run_can_be_aborted() -> None:
    sim = Simulation(loop_spec(stages=[prod(maxParallel=1)]), clusters=FLEET)
    sim.step()
    sim.finish(mk("p1", 1), maker_ok())
    sim.finish(ck("p1", 1), verdict("inconclusive", "no data yet"))
    sim.kwargs["aborted_by"] = "bob"
    d = sim.step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "Aborted")


def drifting(on_exceeded: str = "Halt") -> Simulation:
    drift = {
        "resources": [{"kind": "ConfigMap"}],
        "maxDriftedObjects": 0,
        "onExceeded": on_exceeded,
    }
    spec = loop_spec(stages=[{"name": "canary", "clusters": ["edge"], "drift": drift}])
    return Simulation(spec, clusters={"edge": {}})


def test_drift_is_measured_after_each_maker_and_within_bound_passes() -> None:
    sim = drifting()
    sim.step()
    d = sim.finish(mk("edge", 1), maker_ok())
    assert MeasureDrift(1, "canary", "edge") in d.actions
    sim.kwargs["drift"] = {(1, "edge"): DriftOutcome(0)}
    d = sim.finish(ck("edge", 1), verdict("pass"))
    assert d.status.phase is Phase.SUCCEEDED
    assert [c.name for c in d.status.iterations[0].checkers] == ["tests", "drift"]
    assert d.status.stages[0].clusters[0].drifted_objects == 0


def test_drift_beyond_its_bound_halts_with_drift_exceeded_naming_the_objects() -> None:
    sim = drifting()
    sim.step()
    sim.finish(mk("edge", 1), maker_ok())
    sim.kwargs["drift"] = {(1, "edge"): DriftOutcome(1, ["ConfigMap t/settings: data.mode"])}
    d = sim.finish(ck("edge", 1), verdict("pass"))
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "DriftExceeded")
    progress = d.status.stages[0].clusters[0]
    assert progress.drift_details == ["ConfigMap t/settings: data.mode"]
    assert "ConfigMap t/settings" in (d.status.iterations[0].why or "")
    assert {c.type for c in d.status.conditions} >= {"DriftDetected"}


def test_drift_with_iterate_hands_the_drifted_objects_to_the_next_maker() -> None:
    sim = drifting("Iterate")
    sim.step()
    sim.finish(mk("edge", 1), maker_ok())
    sim.kwargs["drift"] = {(1, "edge"): DriftOutcome(1, ["ConfigMap t/settings: data.mode"])}
    d = sim.finish(ck("edge", 1), verdict("pass"))
    assert created(d) == [mk("edge", 2)]
    files = next(a.pod for a in d.actions if isinstance(a, CreatePod)).files
    drift = next(
        v for v in json.loads(files["feedback.json"])["verdicts"] if v["checker"] == "drift"
    )
    assert drift["verdict"] == "fail" and "ConfigMap t/settings: data.mode" in drift["reasons"]


def test_an_unmeasurable_drift_fails_the_target_with_the_error() -> None:
    sim = drifting()
    sim.step()
    sim.finish(mk("edge", 1), maker_ok())
    sim.kwargs["drift"] = {(1, "edge"): DriftOutcome(0, error="no kind Widget")}
    d = sim.finish(ck("edge", 1), verdict("pass"))
    assert d.status.phase is Phase.FAILED
    assert "no kind Widget" in (d.status.message or "")


def test_stage_events_say_when_a_stage_starts_and_passes() -> None:
    sim = Simulation(loop_spec(stages=[prod(maxParallel=3)]), clusters={"p1": {"tier": "prod"}})
    d = sim.step()
    messages = [a.message for a in d.actions if isinstance(a, RecordEvent)]
    assert any("stage 'prod' started: p1" in m for m in messages)
    sim.finish(mk("p1", 1), maker_ok())
    d = sim.finish(ck("p1", 1), verdict("pass"))
    assert any(a.reason == "StagePassed" for a in d.actions if isinstance(a, RecordEvent))
    assert TargetState.PASSED is d.status.stages[0].clusters[0].state


def test_an_errored_pod_checker_with_retries_runs_again_before_failing_the_target() -> None:
    checker = pod_checker("tests", retries=1)
    sim = Simulation(loop_spec(checkers=[checker]))
    sim.step()
    sim.finish("r-s0-local-i1-maker", maker_ok())
    sim.now += timedelta(seconds=5)
    sim.pods[ck("local", 1)] = ObservedPod(
        ck("local", 1), "Failed", sim.now, 1, "Error", uid=f"uid-{ck('local', 1)}"
    )
    d = sim.step()
    assert created(d) == [f"{ck('local', 1)}-a2"], "attempt 2 of 2"
    assert [r.verdict for r in d.status.iterations[0].retried] == ["error"]
    assert any(a.reason == "CheckerRetry" for a in d.actions if isinstance(a, RecordEvent))
    d = sim.finish(f"{ck('local', 1)}-a2", verdict("pass"))
    assert d.status.phase is Phase.SUCCEEDED


def test_a_pod_checker_out_of_retries_fails_the_target_with_its_error() -> None:
    checker = pod_checker("tests", retries=1)
    sim = Simulation(loop_spec(checkers=[checker]))
    sim.step()
    sim.finish("r-s0-local-i1-maker", maker_ok())
    for name in (ck("local", 1), f"{ck('local', 1)}-a2"):
        sim.now += timedelta(seconds=5)
        sim.pods[name] = ObservedPod(name, "Failed", sim.now, 1, "Error", uid=f"uid-{name}")
        d = sim.step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, "PodFailed")
    assert len(d.status.iterations[0].retried) == 1


def _fleet(n: int) -> dict[str, dict[str, str]]:
    return {f"c{i:02d}": {"tier": "prod"} for i in range(n)}


def test_a_halting_pass_creates_no_pod_for_any_other_target() -> None:
    sim = Simulation(loop_spec(stages=[prod(maxParallel=2)]), clusters=FLEET)
    sim.step()
    sim.finish(mk("p1", 1), maker_ok())
    sim.now += timedelta(seconds=5)
    sim.pods[ck("p1", 1)] = ObservedPod(ck("p1", 1), "Succeeded", sim.now, 0, message="garbage")
    sim.pods[ck("p1", 1)] = ObservedPod(
        ck("p1", 1), "Succeeded", sim.now, 0, message="garbage", uid=f"uid-{ck('p1', 1)}"
    )
    d = sim.step()
    assert d.status.phase is Phase.FAILED
    assert created(d) == [], "p3 must not start after the run failed"


def test_an_iterating_target_starts_no_maker_when_another_fails_in_the_same_pass() -> None:
    sim = Simulation(loop_spec(stages=[prod(maxParallel=2)]), clusters=FLEET)
    sim.step()
    sim.finish(mk("p1", 1), maker_ok())
    sim.finish(mk("p2", 2), maker_ok())
    sim.now += timedelta(seconds=5)
    sim.pods[ck("p1", 1)] = ObservedPod(
        ck("p1", 1),
        "Succeeded",
        sim.now,
        0,
        message=json.dumps(verdict("fail", "again")),
        uid=f"uid-{ck('p1', 1)}",
    )
    sim.pods[ck("p2", 2)] = ObservedPod(
        ck("p2", 2), "Failed", sim.now, 1, "Error", uid=f"uid-{ck('p2', 2)}"
    )
    d = sim.step()
    assert d.status.phase is Phase.FAILED
    assert created(d) == []


def test_sixty_parallel_targets_keep_their_open_iterations_and_never_duplicate() -> None:
    sim = Simulation(loop_spec(stages=[prod()]), clusters=_fleet(60))
    d = sim.step()
    assert len(created(d)) == 60
    for _ in range(3):
        sim.now += timedelta(seconds=10)
        assert created(sim.step()) == [], "an idle pass starts nothing"
    assert len([r for r in sim.status.iterations if r.decision is None]) == 60
    assert sim.status.iteration == 60


def test_a_selector_choosing_more_clusters_than_a_stage_holds_fails_clearly() -> None:
    d = Simulation(loop_spec(stages=[prod()]), clusters=_fleet(65)).step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, "InvalidLoop")
    assert "at most 64" in (d.status.message or "")
    assert created(d) == []


def test_a_stage_where_no_cluster_passed_never_passes_whatever_the_allowance() -> None:
    stages = [
        {
            "name": "canary",
            "clusters": ["gone-1", "gone-2"],
            "failurePolicy": "Continue",
            "maxFailedClusters": 2,
        },
        {"name": "prod", "clusters": ["local"]},
    ]
    d = Simulation(loop_spec(stages=stages)).step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, "ClusterUnavailable")
    assert "no cluster of the stage passed" in (d.status.message or "")
    assert created(d) == [], "prod never starts"


def test_a_checker_placed_in_the_target_is_asked_for_there_and_polled() -> None:
    checker = pod_checker("probe", placement="Target")
    spec = loop_spec(checkers=[checker], stages=[{"name": "canary", "clusters": ["edge"]}])
    sim = Simulation(spec, clusters={"edge": {}})
    sim.step()
    d = sim.finish(mk("edge", 1), maker_ok())
    request = next(a.pod for a in d.actions if isinstance(a, CreatePod))
    assert (request.name, request.in_target) == (ck("edge", 1, name="probe") + "-uid-1", True)
    assert d.status.iterations[0].pods[-1].placed_in == "edge"
    d = sim.step()
    assert d.requeue_after is not None and d.requeue_after <= 3, "no watch there: poll"


def test_placement_target_on_the_local_cluster_runs_in_the_run_namespace() -> None:
    checker = pod_checker("probe", placement="Target")
    sim = Simulation(loop_spec(checkers=[checker]))
    sim.step()
    d = sim.finish("r-s0-local-i1-maker", maker_ok())
    request = next(a.pod for a in d.actions if isinstance(a, CreatePod))
    assert request.in_target is False


def _placed_sim() -> Simulation:
    checker = pod_checker("probe", placement="Target")
    spec = loop_spec(checkers=[checker], stages=[{"name": "canary", "clusters": ["edge"]}])
    edge = ObservedCluster("edge", {}, ClusterState.READY, agent_namespace="kloop-agents")
    return Simulation(spec, clusters={"edge": edge})


def test_a_placed_pod_is_remembered_apart_from_its_iteration_until_cleaned_up() -> None:
    sim = _placed_sim()
    sim.step()
    sim.finish(mk("edge", 1), maker_ok())
    name = ck("edge", 1, name="probe") + "-uid-1"
    placed = sim.status.placed_pods
    assert [(t.name, t.placed_in, t.namespace) for t in placed] == [(name, "edge", "kloop-agents")]
    sim.kwargs["aborted_by"] = "bob"
    d = sim.step()
    assert d.status.phase is Phase.HALTED
    assert any(isinstance(a, DeletePod) and a.name == name for a in d.actions)
    assert [t.name for t in d.status.placed_pods] == [name], "kept until its target is clean"
    assert d.status.placed_pods[0].uid == f"uid-{name}"
    sim.pods[name] = ObservedPod(name, "Unknown", uid=f"uid-{name}")  # the target stops answering
    d = sim.step()
    assert any(isinstance(a, DeletePod) and a.name == name for a in d.actions), "asked again"
    del sim.pods[name]
    sim.kwargs["placed_cleaned"] = frozenset({name})
    assert sim.step().status.placed_pods == []


def test_a_cluster_that_stays_unreachable_mid_run_ends_its_target_after_a_grace() -> None:
    sim = Simulation(
        loop_spec(stages=[{"name": "prod", "clusters": ["edge"]}]), clusters={"edge": {}}
    )
    sim.step()
    down = ObservedCluster("edge", {}, ClusterState.UNAVAILABLE, "dial tcp: i/o timeout")
    sim.kwargs["clusters"] = {"edge": down}
    sim.now += timedelta(seconds=10)
    d = sim.step()
    assert d.status.phase is Phase.RUNNING, "a blip is not a failure"
    assert d.status.stages[0].clusters[0].unavailable_since is not None
    sim.now += timedelta(seconds=61)
    d = sim.step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, "ClusterUnavailable")
    assert "i/o timeout" in (d.status.message or "")
    assert any(isinstance(a, DeletePod) and a.name == mk("edge", 1) for a in d.actions)


def test_a_cluster_back_within_the_grace_keeps_its_target() -> None:
    sim = Simulation(
        loop_spec(stages=[{"name": "prod", "clusters": ["edge"]}]), clusters={"edge": {}}
    )
    sim.step()
    sim.kwargs["clusters"] = {"edge": ObservedCluster("edge", {}, ClusterState.UNAVAILABLE, "x")}
    sim.now += timedelta(seconds=10)
    sim.step()
    sim.kwargs["clusters"] = {"edge": {}}
    sim.now += timedelta(seconds=100)
    d = sim.step()
    assert d.status.phase is Phase.RUNNING
    assert d.status.stages[0].clusters[0].unavailable_since is None
