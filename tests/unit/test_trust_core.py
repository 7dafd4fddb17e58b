"""Regression tests for issue 14 (trust) in the pure decision core, one or more per defect."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from kloop.api.looprun import BudgetOverride, Phase
from kloop.api.results import InvalidResult, parse_checker_result, parse_maker_result
from kloop.core.decide import decide
from kloop.core.model import AppendMemory, DeletePod, ObservedPod, RecordEvent
from kloop.core.plan import compute_limits
from tests.unit.builders import (
    T0,
    Simulation,
    checker_pod,
    container,
    created,
    loop_spec,
    maker_ok,
    maker_pod,
    observe,
    running,
    succeeded,
    verdict,
    with_teardown,
)

pytestmark = pytest.mark.unit


# --- 2: non-finite numbers and permanent write errors --------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        '{"v":1,"outcome":"changed","tokens":1,"costUSD":Infinity}',
        '{"v":1,"outcome":"changed","costUSD":NaN}',
        '{"v":1,"outcome":"changed","costUSD":1e309}',
        '{"v":1,"outcome":"changed","tokens":1e309}',
    ],
)
def test_trust_2_non_finite_maker_numbers_are_invalid_agent_output(message: str) -> None:
    with pytest.raises(InvalidResult):
        parse_maker_result(message)
    sim = Simulation(loop_spec())
    sim.step()
    d = sim.finish(maker_pod(1), message)
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, "InvalidAgentOutput")
    assert d.status.usage.cost_usd == 0 and d.status.usage.tokens == 0
    json.dumps(d.status.to_kube(), allow_nan=False)  # nothing non-finite reaches status


def test_trust_2_non_finite_checker_score_is_invalid_agent_output() -> None:
    with pytest.raises(InvalidResult):
        parse_checker_result('{"v":1,"verdict":"pass","score":NaN}')


def test_trust_2_a_permanently_rejected_write_fails_the_run_with_its_reason() -> None:
    sim = Simulation(with_teardown())
    sim.step()
    sim.kwargs["write_rejected"] = ("StatusRejected", "status: Invalid value: 'x'")
    d = sim.step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, "StatusRejected")
    assert "Invalid value" in (d.status.message or "")
    assert created(d) == ["r-teardown"], "the teardown still runs"
    assert any(isinstance(a, RecordEvent) and a.reason == "StatusRejected" for a in d.actions)


# --- 5: halting keeps what already happened ------------------------------------------------------


def test_trust_5_deadline_records_the_maker_that_just_ended() -> None:
    sim = Simulation(loop_spec(budget={"maxIterations": 3, "deadlineSeconds": 60}))
    sim.step()
    sim.now = T0 + timedelta(seconds=61)
    sim.pods[maker_pod(1)] = succeeded(maker_pod(1), maker_ok(tokens=5000, cost=12.5), sim.now)
    d = sim.step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "Deadline")
    assert d.status.usage.tokens == 5000 and d.status.usage.cost_usd == 12.5
    record = d.status.iterations[0]
    assert record.maker is not None and record.maker.tokens == 5000
    assert record.decision == "halt"
    assert [a.entry["iteration"] for a in d.actions if isinstance(a, AppendMemory)] == [1]


def test_trust_5_abort_records_ended_checkers_and_closes_the_iteration() -> None:
    sim = Simulation(loop_spec())
    sim.step()
    sim.finish(maker_pod(1), maker_ok(tokens=10))
    sim.pods[checker_pod(1)] = succeeded(
        checker_pod(1), {**verdict("fail", "nope"), "tokens": 7}, sim.now
    )
    sim.kwargs["aborted_by"] = "bob"
    d = sim.step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "Aborted")
    record = d.status.iterations[0]
    assert record.decision == "halt"
    assert [c.verdict for c in record.checkers] == ["fail"]
    assert d.status.usage.tokens == 17
    assert any(isinstance(a, AppendMemory) for a in d.actions)


def test_trust_5_loop_deleted_records_the_ended_maker() -> None:
    sim = Simulation(loop_spec())
    sim.step()
    sim.pods[maker_pod(1)] = succeeded(maker_pod(1), maker_ok(tokens=42))
    d = decide(observe(sim.status, pods=dict(sim.pods), loop_missing=True))
    assert d.status.phase is Phase.HALTED
    assert d.status.usage.tokens == 42
    assert d.status.iterations[0].maker is not None


# --- 6: budgets ----------------------------------------------------------------------------------


def test_trust_6_no_maker_starts_after_a_stage_passes_over_budget() -> None:
    spec = loop_spec(
        budget={"maxIterations": 3, "maxTokens": 1000},
        stages=[{"name": "a", "clusters": ["local"]}, {"name": "b", "clusters": ["local"]}],
    )
    sim = Simulation(spec)
    sim.step()
    sim.finish("r-s0-local-i1-maker", maker_ok(tokens=900))
    d = sim.finish("r-s0-local-i1-check-tests", {**verdict("pass"), "tokens": 5000})
    assert created(d) == [], "stage b must not start a maker at 5,900 of 1,000 tokens"
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "TokenBudget")


def test_trust_6_run_override_may_only_lower_the_loops_caps() -> None:
    spec = loop_spec(budget={"maxIterations": 3, "maxTokens": 1000, "maxCostUSD": 5})
    raised = BudgetOverride.model_validate(
        {"maxIterations": 50, "maxTokens": 10**6, "maxCostUSD": 100, "deadlineSeconds": 60}
    )
    limits = compute_limits(spec, raised)
    assert (limits.max_iterations, limits.max_tokens, limits.max_cost_usd) == (3, 1000, 5)
    assert limits.deadline_seconds == 60, "a cap the Loop does not set may be added"
    lowered = compute_limits(spec, BudgetOverride.model_validate({"maxTokens": 10}))
    assert lowered.max_tokens == 10


def test_trust_6_a_stage_cannot_iterate_more_than_the_run_allows() -> None:
    spec = loop_spec(
        budget={"maxIterations": 2},
        stages=[{"name": "a", "clusters": ["local"], "maxIterations": 9}],
    )
    sim = Simulation(spec)
    sim.step()
    for i in (1, 2):
        sim.finish(f"r-s0-local-i{i}-maker", maker_ok())
        d = sim.finish(f"r-s0-local-i{i}-check-tests", verdict("fail", "x"))
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "MaxIterations")


# --- 7: waiting for approval ---------------------------------------------------------------------


def _first_stage_needs_approval() -> Simulation:
    spec = with_teardown(
        budget={"maxIterations": 3, "deadlineSeconds": 60},
        stages=[{"name": "prod", "clusters": ["local"], "requireApproval": True}],
    )
    sim = Simulation(spec)
    d = sim.step()
    assert d.status.phase is Phase.AWAITING_APPROVAL
    return sim


def test_trust_7_waiting_for_the_first_stage_honours_abort() -> None:
    sim = _first_stage_needs_approval()
    sim.kwargs["aborted_by"] = "bob"
    d = sim.step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "Aborted")


def test_trust_7_waiting_for_the_first_stage_honours_the_deadline() -> None:
    sim = _first_stage_needs_approval()
    sim.now = T0 + timedelta(seconds=61)
    d = sim.step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "Deadline")


def test_trust_7_a_waiting_run_posts_no_event_on_resync() -> None:
    sim = _first_stage_needs_approval()
    for _ in range(3):
        sim.now += timedelta(seconds=15)
        d = sim.step()
        assert [a for a in d.actions if isinstance(a, RecordEvent)] == []
        assert d.status.phase is Phase.AWAITING_APPROVAL


# --- 8: nothing left behind ----------------------------------------------------------------------


def test_trust_8_every_pass_of_a_finished_run_deletes_its_live_pods() -> None:
    sim = Simulation(loop_spec(budget={"maxIterations": 3, "deadlineSeconds": 60}))
    sim.step()
    sim.now = T0 + timedelta(seconds=61)
    halted = sim.step()
    assert halted.done
    # the operator crashed after writing status: the maker still runs on the next start
    again = decide(observe(halted.status, pods={maker_pod(1): running(maker_pod(1))}, now=sim.now))
    assert DeletePod(maker_pod(1), "run halted") in again.actions
    gone = replace(running(maker_pod(1)), deleting=True)
    assert not any(
        isinstance(a, DeletePod)
        for a in decide(observe(halted.status, pods={maker_pod(1): gone})).actions
    )


def test_trust_8_a_run_failing_at_start_still_runs_its_teardown() -> None:
    spec = with_teardown(stages=[{"name": "prod", "clusterSelector": {"matchLabels": {"t": "x"}}}])
    d = decide(observe(spec=spec))
    assert d.status.phase is Phase.FAILED
    assert created(d) == ["r-teardown"]


def test_trust_8_a_maker_pod_that_disappears_is_lost_not_run_again() -> None:
    sim = Simulation(loop_spec())
    sim.step()
    sim.step()  # the maker pod is seen: its uid is recorded
    assert sim.status.iterations[0].pods[0].uid == f"uid-{maker_pod(1)}"
    del sim.pods[maker_pod(1)]  # drained, or deleted by hand
    d = sim.step()
    assert created(d) == [], "no silent second maker"
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, "PodLost")
    assert any(isinstance(a, RecordEvent) and a.reason == "PodLost" for a in d.actions)


def test_trust_8_a_teardown_pod_that_disappears_is_lost_not_run_again() -> None:
    sim = Simulation(with_teardown(budget={"maxIterations": 1}))
    sim.step()
    sim.finish(maker_pod(1), maker_ok())
    sim.finish(checker_pod(1), verdict("fail", "x"))
    sim.step()  # the teardown pod is seen
    del sim.pods["r-teardown"]
    d = sim.step()
    assert created(d) == []
    assert d.status.teardown is not None and d.status.teardown.state == "Failed"
    assert "disappeared" in (d.status.teardown.message or "")
    assert d.done


# --- 9: only pods kloop created are trusted ------------------------------------------------------


def test_trust_9_a_checker_pod_planted_before_kloop_asked_is_not_trusted() -> None:
    sim = Simulation(loop_spec())
    sim.step()
    sim.step()
    # the maker plants a passing "checker" pod under the deterministic name, then ends
    sim.pods[checker_pod(1)] = succeeded(checker_pod(1), verdict("pass"))
    d = sim.finish(maker_pod(1), maker_ok())
    assert d.status.phase is Phase.FAILED
    assert d.status.halt_reason == "UntrustedPod"
    assert d.status.last_verdict != "pass"


def test_trust_9_a_pod_swapped_after_creation_is_not_trusted() -> None:
    sim = Simulation(loop_spec())
    sim.step()
    sim.finish(maker_pod(1), maker_ok())
    sim.step()  # the checker pod kloop created is seen; its uid is recorded
    sim.pods[checker_pod(1)] = ObservedPod(
        checker_pod(1), "Succeeded", T0, 0, message=json.dumps(verdict("pass")), uid="forged"
    )
    d = sim.step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, "UntrustedPod")


def test_trust_9_after_a_restart_a_requested_pod_is_adopted_by_name() -> None:
    start = decide(observe())  # status records the intent to create the maker
    adopted = decide(observe(start.status, pods={maker_pod(1): running(maker_pod(1))}))
    assert created(adopted) == []
    assert adopted.status.iterations[0].pods[0].uid == f"uid-{maker_pod(1)}"


def test_trust_9_the_uid_the_apiserver_returned_must_match() -> None:
    start = decide(observe())
    obs = observe(start.status, pods={maker_pod(1): running(maker_pod(1))})
    d = decide(replace(obs, created={maker_pod(1): "the-real-one"}))
    assert d.status.halt_reason == "UntrustedPod"


def test_trust_2_retrying_shows_reconciling_then_stalled_with_the_error() -> None:
    from kloop.core.conditions import STALL_AFTER_ATTEMPTS, retrying

    status = decide(observe()).status
    first = {c.type: c for c in retrying(status, 1, T0, "InternalError 500: etcd down", 1)}
    assert first["Reconciling"].reason == "RetryingAfterError"
    assert "etcd down" in first["Reconciling"].message
    assert "Stalled" not in first
    later = retrying(status, 1, T0, "still down", STALL_AFTER_ATTEMPTS)
    stalled = {c.type: c for c in later}["Stalled"]
    assert (stalled.status.value, stalled.reason) == ("True", "RetryingAfterError")
    assert {c.type for c in later} >= {"Ready", "Reconciling", "Stalled"}


def test_trust_9_an_old_crd_that_prunes_tracked_pods_is_a_clear_permanent_error() -> None:
    from kloop.adapters.apply import PermanentWriteError, _check_not_pruned

    written = decide(observe()).status.to_kube()
    assert written["iterations"][0]["pods"], "the maker is tracked"
    _check_not_pruned(written, written)  # a current CRD keeps them
    pruned = json.loads(json.dumps(written))
    del pruned["iterations"][0]["pods"]
    with pytest.raises(PermanentWriteError, match="CRD is older than this operator"):
        _check_not_pruned(written, pruned)


def test_trust_10_status_fields_with_fixed_values_are_enums_in_the_crd() -> None:
    from kloop.api.crdgen import build_crds

    status = build_crds()["kloop.dev_loopruns.yaml"]["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]["properties"]["status"]["properties"]
    iteration = status["iterations"]["items"]["properties"]
    stage = status["stages"]["items"]["properties"]
    enums = {
        "phase": status["phase"],
        "lastVerdict": status["lastVerdict"],
        "teardown.state": status["teardown"]["properties"]["state"],
        "stages.state": stage["state"],
        "stages.clusters.state": stage["clusters"]["items"]["properties"]["state"],
        "maker.outcome": iteration["maker"]["properties"]["outcome"],
        "checkers.verdict": iteration["checkers"]["items"]["properties"]["verdict"],
        "decision": iteration["decision"],
    }
    missing = [name for name, schema in enums.items() if not schema.get("enum")]
    assert missing == []
    assert set(iteration["decision"]["enum"]) >= {"iterate", "succeed", "halt", "fail"}


def test_trust_9_a_teardown_pod_planted_before_the_run_ends_is_not_trusted() -> None:
    sim = Simulation(with_teardown(budget={"maxIterations": 1}))
    sim.step()
    sim.finish(maker_pod(1), maker_ok())
    sim.pods["r-teardown"] = succeeded("r-teardown", "")  # planted while the checker runs
    d = sim.finish(checker_pod(1), verdict("fail", "x"))
    assert d.status.teardown is not None and d.status.teardown.state == "Failed"
    assert "not trusted" in (d.status.teardown.message or "")
    assert created(d) == []
    assert any(isinstance(a, RecordEvent) and a.reason == "UntrustedPod" for a in d.actions)


def test_trust_8_a_pod_gone_before_kloop_looked_again_is_lost_not_recreated() -> None:
    start = decide(observe())  # asks for the maker; the create call returned a uid
    d = decide(observe(start.status, created={maker_pod(1): "uid-of-the-created-pod"}))
    assert created(d) == [], "the pod kloop created is gone: not a silent second run"
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, "PodLost")


def test_trust_7_a_run_waiting_for_its_loop_can_be_aborted() -> None:
    waiting = decide(observe(loop_missing=True))
    assert waiting.status.phase is Phase.PENDING
    d = decide(observe(waiting.status, loop_missing=True, aborted_by="bob"))
    assert (d.status.phase, d.status.halt_reason) == (Phase.HALTED, "Aborted")
    assert d.done


def test_trust_2_a_lost_checker_fails_the_run_without_waiting_for_the_others() -> None:
    two = loop_spec(
        checkers=[
            {"name": "tests", "template": {"spec": {"containers": [container("c:1", "c")]}}},
            {"name": "slow", "template": {"spec": {"containers": [container("s:1", "s")]}}},
        ]
    )
    sim = Simulation(two)
    sim.step()
    sim.finish(maker_pod(1), maker_ok())
    sim.step()  # both checker pods seen
    del sim.pods[checker_pod(1)]
    d = sim.step()
    assert (d.status.phase, d.status.halt_reason) == (Phase.FAILED, "PodLost")
    assert any(isinstance(a, DeletePod) and a.name == checker_pod(1, "slow") for a in d.actions)
