"""Every transition of the decision core, driven with plain values (no cluster, no clock)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from kloop.api.looprun import LoopRunStatus, MakerRecord, Phase
from kloop.core.decide import decide
from kloop.core.model import (
    AppendMemory,
    CreatePod,
    DeletePod,
    EvaluateOracle,
    ObservedLoop,
    ObservedPod,
    OracleOutcome,
    RecordEvent,
    Role,
)
from tests.unit.builders import (
    T0,
    Simulation,
    checker_pod,
    created,
    loop_spec,
    maker_ok,
    maker_pod,
    observe,
    running,
    verdict,
    with_teardown,
)

pytestmark = pytest.mark.unit


def conditions(status: LoopRunStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status.value, c.reason) for c in status.conditions}


def test_new_run_starts_iteration_one_with_a_maker_pod() -> None:
    d = decide(observe())
    assert d.status.phase is Phase.RUNNING
    assert d.status.iteration == 1
    assert created(d) == [maker_pod(1)]
    pod = next(a.pod for a in d.actions if isinstance(a, CreatePod))
    assert pod.role is Role.MAKER
    assert json.loads(pod.files["feedback.json"])["verdicts"] == []
    assert conditions(d.status)["Reconciling"] == ("True", "Iterating")
    assert conditions(d.status)["Ready"][0] == "False"


def test_missing_loop_stalls_the_run_without_creating_pods() -> None:
    d = decide(observe(loop_missing=True))
    assert d.status.phase is Phase.PENDING
    assert created(d) == []
    assert conditions(d.status)["Stalled"] == ("True", "LoopNotFound")
    assert d.requeue_after is not None


def test_running_maker_is_awaited_without_new_actions() -> None:
    sim = Simulation(loop_spec())
    sim.step()
    d = sim.step()
    assert created(d) == []
    assert not any(isinstance(a, DeletePod) for a in d.actions)


def test_pass_on_first_iteration_succeeds_and_records_memory() -> None:
    sim = Simulation(loop_spec())
    sim.step()
    d = sim.finish(maker_pod(1), maker_ok(tokens=10))
    assert created(d) == [checker_pod(1)]
    checker = next(a.pod for a in d.actions if isinstance(a, CreatePod))
    assert json.loads(checker.files["maker.json"])["summary"] == "did it"
    d = sim.finish(checker_pod(1), verdict("pass", "all green"))
    assert d.status.phase is Phase.SUCCEEDED
    assert d.done
    assert d.status.iterations[0].decision == "succeed"
    assert d.status.teardown is not None and d.status.teardown.state == "Skipped"
    assert any(isinstance(a, AppendMemory) for a in d.actions)
    assert conditions(d.status) == {"Ready": ("True", "Succeeded")}


def test_failing_verdict_iterates_with_the_reasons_as_feedback() -> None:
    sim = Simulation(loop_spec())
    sim.step()
    sim.finish(maker_pod(1), maker_ok())
    d = sim.finish(checker_pod(1), verdict("fail", "test_login is flaky"))
    assert d.status.phase is Phase.RUNNING
    assert d.status.iteration == 2
    assert d.status.iterations[0].decision == "iterate"
    assert "test_login is flaky" in (d.status.iterations[0].why or "")
    maker2 = next(a.pod for a in d.actions if isinstance(a, CreatePod))
    assert maker2.name == maker_pod(2)
    feedback = json.loads(maker2.files["feedback.json"])
    assert feedback["iteration"] == 1
    assert feedback["verdicts"][0]["reasons"] == ["test_login is flaky"]


def test_pass_on_iteration_three_after_two_failures() -> None:
    sim = Simulation(loop_spec())
    sim.step()
    for i in (1, 2):
        sim.finish(maker_pod(i), maker_ok())
        sim.finish(checker_pod(i), verdict("fail", f"still broken {i}"))
    sim.finish(maker_pod(3), maker_ok())
    d = sim.finish(checker_pod(3), verdict("pass"))
    assert d.status.phase is Phase.SUCCEEDED
    assert [r.decision for r in d.status.iterations] == ["iterate", "iterate", "succeed"]
    assert sim.memory == {1, 2, 3}
    assert sim.created == [
        maker_pod(1),
        checker_pod(1),
        maker_pod(2),
        checker_pod(2),
        maker_pod(3),
        checker_pod(3),
    ]


def test_max_iterations_halts_and_runs_teardown_once() -> None:
    sim = Simulation(with_teardown(budget={"maxIterations": 2}))
    sim.step()
    for i in (1, 2):
        sim.finish(maker_pod(i), maker_ok())
        d = sim.finish(checker_pod(i), verdict("fail", "nope"))
    assert d.status.phase is Phase.HALTED
    assert d.status.halt_reason == "MaxIterations"
    assert created(d) == ["r-teardown"]
    assert not d.done
    assert conditions(d.status)["BudgetExhausted"] == ("True", "MaxIterations")
    assert conditions(d.status)["Reconciling"] == ("True", "TearingDown")
    again = sim.step()
    assert created(again) == [], "teardown must not be created twice"
    final = sim.finish("r-teardown", "")
    assert final.status.teardown is not None and final.status.teardown.state == "Succeeded"
    assert final.done
    assert sim.created.count("r-teardown") == 1
    assert created(sim.step()) == []
    assert "Stalled" in conditions(final.status)


def test_token_budget_halts_before_spending_more() -> None:
    sim = Simulation(with_teardown(budget={"maxIterations": 5, "maxTokens": 1000}))
    sim.step()
    sim.finish(maker_pod(1), maker_ok(tokens=600))
    sim.finish(checker_pod(1), verdict("fail", "no"))
    d = sim.finish(maker_pod(2), maker_ok(tokens=600))
    assert d.status.phase is Phase.HALTED
    assert d.status.halt_reason == "TokenBudget"
    assert d.status.usage.tokens == 1200
    assert checker_pod(2) not in created(d), "no checker spends tokens past the budget"
    assert created(d) == ["r-teardown"]


def test_cost_budget_halts() -> None:
    sim = Simulation(loop_spec(budget={"maxIterations": 5, "maxCostUSD": 1.0}))
    sim.step()
    d = sim.finish(maker_pod(1), maker_ok(cost=1.5))
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "CostBudget")


def test_run_budget_override_wins_over_the_loop() -> None:
    sim = Simulation(
        loop_spec(), run_spec={"loopRef": {"name": "l"}, "budget": {"maxIterations": 1}}
    )
    sim.step()
    sim.finish(maker_pod(1), maker_ok())
    d = sim.finish(checker_pod(1), verdict("fail", "x"))
    assert d.status.halt_reason == "MaxIterations"


def test_deadline_halts_and_deletes_the_running_maker() -> None:
    sim = Simulation(loop_spec(budget={"maxIterations": 3, "deadlineSeconds": 60}))
    first = sim.step()
    assert first.requeue_after is not None and first.requeue_after <= 60
    sim.now = T0 + timedelta(seconds=61)
    d = sim.step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "Deadline")
    assert DeletePod(maker_pod(1), "run halted") in d.actions


@pytest.mark.parametrize(
    ("pod", "reason", "text"),
    [
        (
            ObservedPod(maker_pod(1), "Failed", T0, 2, "Error", "boom"),
            "PodFailed",
            "exited with code 2: boom",
        ),
        (ObservedPod(maker_pod(1), "Failed", T0, 137, "OOMKilled"), "OOMKilled", "OOMKilled"),
        (ObservedPod(maker_pod(1), "Failed", T0, None, "Evicted", "disk"), "PodFailed", "evicted"),
        (
            ObservedPod(maker_pod(1), "Pending", T0, None, "ErrImageNeverPull"),
            "PodFailed",
            "cannot start",
        ),
        (
            ObservedPod(maker_pod(1), "Succeeded", T0, 0, None, "garbage!"),
            "InvalidAgentOutput",
            "not valid JSON",
        ),
        (
            ObservedPod(maker_pod(1), "Succeeded", T0, 0, None, None),
            "InvalidAgentOutput",
            "no result",
        ),
    ],
)
def test_maker_errors_fail_the_run_with_a_clear_reason(
    pod: ObservedPod, reason: str, text: str
) -> None:
    start = decide(observe())
    d = decide(observe(start.status, pods={pod.name: pod}, now=T0 + timedelta(seconds=5)))
    assert d.status.phase is Phase.FAILED
    assert d.status.halt_reason == reason
    assert text in (d.status.message or "")
    assert d.status.iterations[0].maker is not None
    assert d.status.iterations[0].maker.outcome == "error"
    assert conditions(d.status)["Stalled"] == ("True", reason)
    assert any(isinstance(a, RecordEvent) and a.type == "Warning" for a in d.actions)
    assert not created(d)


def test_maker_past_its_timeout_is_an_error_and_is_deleted() -> None:
    spec = loop_spec(maker={"timeoutSeconds": 30, "template": loop_spec().maker.template.to_kube()})
    start = decide(observe(spec=spec))
    d = decide(
        observe(
            start.status, spec, {maker_pod(1): running(maker_pod(1))}, T0 + timedelta(seconds=31)
        )
    )
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, "TimedOut")
    assert any(isinstance(a, DeletePod) and a.name == maker_pod(1) for a in d.actions)


def test_garbage_checker_output_fails_the_run() -> None:
    sim = Simulation(loop_spec())
    sim.step()
    sim.finish(maker_pod(1), maker_ok())
    d = sim.finish(checker_pod(1), '{"verdict": "looks good to me"}')
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, "InvalidAgentOutput")


def test_decisions_are_idempotent_so_a_restart_adopts_instead_of_duplicating() -> None:
    start = decide(observe())
    again = decide(observe(start.status))
    assert created(again) == [maker_pod(1)], "same deterministic name: creating it again is a no-op"
    adopted = decide(observe(start.status, pods={maker_pod(1): running(maker_pod(1))}))
    assert created(adopted) == []


def test_http_oracle_is_evaluated_then_recorded() -> None:
    spec = loop_spec(
        checkers=[
            {
                "name": "rate",
                "kind": "http",
                "http": {"url": "http://127.0.0.1:9/q", "jsonPath": "$.v", "passIf": "< 1"},
            }
        ]
    )
    sim = Simulation(spec)
    sim.step()
    d = sim.finish(maker_pod(1), maker_ok())
    assert EvaluateOracle(1, "rate") in d.actions
    sim.kwargs["oracles"] = {(1, "rate"): OracleOutcome("pass", ["0.2 < 1"], "0.2")}
    d = sim.step()
    assert d.status.phase is Phase.SUCCEEDED
    assert d.status.iterations[0].checkers[0].reasons == ["0.2 < 1"]


def test_memory_is_not_appended_twice() -> None:
    sim = Simulation(loop_spec())
    sim.step()
    sim.finish(maker_pod(1), maker_ok())
    sim.finish(checker_pod(1), verdict("fail", "x"))
    d = sim.step()
    assert not any(isinstance(a, AppendMemory) for a in d.actions)


def test_stages_run_in_order_and_wait_for_approval() -> None:
    spec = loop_spec(
        stages=[
            {"name": "canary", "clusters": ["local"]},
            {
                "name": "prod",
                "clusterSelector": {"matchLabels": {"tier": "prod"}},
                "requireApproval": True,
            },
        ]
    )
    clusters = {"p1": {"tier": "prod"}, "p2": {"tier": "prod"}, "dev": {"tier": "dev"}}
    sim = Simulation(spec, clusters=clusters)
    sim.step()
    sim.finish("r-s0-local-i1-maker", maker_ok())
    d = sim.finish("r-s0-local-i1-check-tests", verdict("pass"))
    assert d.status.phase is Phase.AWAITING_APPROVAL
    assert [c.name for c in d.status.stages[1].clusters] == ["p1", "p2"]
    assert conditions(d.status)["AwaitingApproval"][0] == "True"
    assert created(sim.step()) == []
    sim.kwargs["approvals"] = {"prod": "alice"}
    d = sim.step()
    assert d.status.phase is Phase.RUNNING
    assert d.status.stages[1].approved_by == "alice"
    assert created(d) == ["r-s1-p1-i2-maker", "r-s1-p2-i3-maker"], "both clusters at once"
    assert d.status.clusters_passed == "0/2"
    sim.finish("r-s1-p1-i2-maker", maker_ok())
    d = sim.finish("r-s1-p1-i2-check-tests", verdict("pass"))
    assert d.status.phase is Phase.RUNNING, "p2 still runs"
    assert d.status.clusters_passed == "1/2"
    sim.finish("r-s1-p2-i3-maker", maker_ok())
    d = sim.finish("r-s1-p2-i3-check-tests", verdict("pass"))
    assert d.status.phase is Phase.SUCCEEDED
    assert [s.state for s in d.status.stages] == ["Passed", "Passed"]
    assert d.status.clusters_passed == "2/2"


def test_stage_selecting_no_cluster_fails_clearly() -> None:
    spec = loop_spec(stages=[{"name": "prod", "clusterSelector": {"matchLabels": {"t": "x"}}}])
    d = decide(observe(spec=spec))
    assert d.status.phase is Phase.FAILED
    assert "selects no cluster" in (d.status.message or "")


def test_abort_halts_the_run() -> None:
    sim = Simulation(with_teardown())
    sim.step()
    sim.kwargs["aborted_by"] = "bob"
    d = sim.step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "Aborted")
    assert created(d) == ["r-teardown"]


def test_condition_transition_time_is_kept_while_status_does_not_flip() -> None:
    sim = Simulation(loop_spec())
    sim.step()
    before = {c.type: c.last_transition_time for c in sim.status.conditions}
    sim.now = T0 + timedelta(seconds=10)
    sim.step()
    after = {c.type: c.last_transition_time for c in sim.status.conditions}
    assert before == after


def test_trust_6_budget_reached_by_the_maker_starts_no_checker() -> None:
    sim = Simulation(loop_spec(budget={"maxIterations": 5, "maxTokens": 100}))
    sim.step()
    d = sim.finish(maker_pod(1), maker_ok(tokens=100))
    assert created(d) == [], "no checker pod starts while a cap is reached"
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "TokenBudget")
    assert d.status.iterations[0].decision == "halt"
    assert d.status.iterations[0].maker is not None


def test_loop_deleted_mid_run_halts_instead_of_hanging() -> None:
    sim = Simulation(with_teardown())
    sim.step()
    d = decide(observe(sim.status, pods=dict(sim.pods), loop_missing=True))
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "LoopNotFound")
    assert d.status.teardown is not None and d.status.teardown.state == "Skipped"
    assert DeletePod(maker_pod(1), "run halted") in d.actions
    assert d.done


def test_invalid_loop_before_start_stalls_with_its_own_reason() -> None:
    obs = observe(loop_missing=True)
    invalid = replace(obs, loop=ObservedLoop("l", None, "Loop 'l' is invalid: x", uid="u"))
    d = decide(invalid)
    assert conditions(d.status)["Stalled"] == ("True", "InvalidLoop")
    assert d.status.phase is Phase.PENDING


def test_stages_edited_mid_run_halt_with_loop_changed() -> None:
    two = loop_spec(
        stages=[{"name": "a", "clusters": ["local"]}, {"name": "b", "clusters": ["local"]}]
    )
    sim = Simulation(two)
    sim.step()
    sim.spec = loop_spec(stages=[{"name": "b", "clusters": ["local"]}])
    d = sim.step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "LoopChanged")
    assert "start a new run" in (d.status.message or "")


def test_memory_config_map_owned_by_someone_else_fails_the_run_and_is_not_written() -> None:
    sim = Simulation(loop_spec(), memory_conflict="ConfigMap victim is not this Loop's memory")
    d = sim.step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, "MemoryConflict")
    assert not any(isinstance(a, (AppendMemory, CreatePod)) for a in d.actions)


def test_pod_rejected_by_the_apiserver_fails_the_run_with_its_message() -> None:
    start = decide(observe())
    rejected = ObservedPod(maker_pod(1), "Failed", reason="Rejected", message="cpu: banana")
    d = decide(observe(start.status, pods={maker_pod(1): rejected}))
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, "PodRejected")
    assert "rejected by the apiserver: cpu: banana" in (d.status.message or "")


def test_a_finished_run_creates_nothing_when_decided_again() -> None:
    sim = Simulation(with_teardown(budget={"maxIterations": 1}))
    sim.step()
    sim.finish(maker_pod(1), maker_ok())
    sim.finish(checker_pod(1), verdict("fail", "x"))
    final = sim.finish("r-teardown", "")
    assert final.done
    del sim.pods["r-teardown"]  # even with the pod gone (deleted by hand), no second teardown
    again = sim.step()
    assert created(again) == [] and again.done


def test_pending_memory_entries_are_appended_in_order() -> None:
    sim = Simulation(loop_spec())
    sim.step()
    sim.finish(maker_pod(1), maker_ok())
    sim.finish(checker_pod(1), verdict("fail", "x"))
    sim.finish(maker_pod(2), maker_ok())
    sim.finish(checker_pod(2), verdict("fail", "y"))
    d = decide(observe(sim.status, pods=dict(sim.pods), memory=frozenset()))
    entries = [a.entry["iteration"] for a in d.actions if isinstance(a, AppendMemory)]
    assert entries == [1, 2]
    assert isinstance(d.actions[0], AppendMemory) and isinstance(d.actions[1], AppendMemory)


def test_a_checker_removed_mid_run_no_longer_decides() -> None:
    two = loop_spec(
        checkers=[
            {
                "name": "tests",
                "template": {
                    "spec": {"containers": [{"name": "c", "image": "check:1", "command": ["c"]}]}
                },
            },
            {
                "name": "lint",
                "template": {
                    "spec": {"containers": [{"name": "c", "image": "lint:1", "command": ["l"]}]}
                },
            },
        ]
    )
    sim = Simulation(two)
    sim.step()
    sim.finish(maker_pod(1), maker_ok())
    sim.finish(checker_pod(1, "lint"), verdict("fail", "style"))
    sim.spec = loop_spec()  # only "tests" is left
    d = sim.finish(checker_pod(1), verdict("pass"))
    assert d.status.phase is Phase.SUCCEEDED
    assert [c.name for c in d.status.iterations[0].checkers] == ["tests"]


def test_clusters_of_a_started_stage_are_fixed_at_start() -> None:
    spec = loop_spec(stages=[{"name": "prod", "clusterSelector": {"matchLabels": {"t": "p"}}}])
    sim = Simulation(spec, clusters={"p1": {"t": "p"}})
    sim.step()
    sim.kwargs["clusters"] = {"p1": {"t": "p"}, "p2": {"t": "p"}}  # a new cluster Secret
    sim.finish("r-s0-p1-i1-maker", maker_ok())
    d = sim.finish("r-s0-p1-i1-check-tests", verdict("pass"))
    assert d.status.phase is Phase.SUCCEEDED
    assert [c.name for c in d.status.stages[0].clusters] == ["p1"]


def test_unknown_recorded_reasons_do_not_crash_the_decision() -> None:
    start = decide(observe())
    record = start.status.iterations[0]
    record.maker = MakerRecord(outcome="error", summary="odd", error_reason="FromTheFuture")
    d = decide(observe(start.status))
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, "MakerError")


def test_running_status_without_iterations_starts_cleanly() -> None:
    d = decide(observe(LoopRunStatus(phase=Phase.RUNNING)))
    assert d.status.iteration == 1
    assert created(d) == [maker_pod(1)]
