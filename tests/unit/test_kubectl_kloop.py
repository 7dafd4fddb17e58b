"""kubectl kloop without a cluster: what commands decide, how they render, their help."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from kloop.cli import actions, render
from kloop.cli.commands import app
from kloop.cli.exits import CliError, ExitCode, outcome_code

pytestmark = pytest.mark.unit

Json = dict[str, Any]
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def a_run(**status: Any) -> Json:
    annotations = status.pop("annotations", {})
    return {
        "apiVersion": "kloop.dev/v1alpha1",
        "kind": "LoopRun",
        "metadata": {
            "name": "r1",
            "namespace": "team",
            "creationTimestamp": "2026-03-01T11:55:00Z",
            "annotations": annotations,
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"loopRef": {"name": "nightly"}},
        "status": status,
    }


def paused_run() -> Json:
    return a_run(
        phase="Paused",
        stage="prod",
        stages=[
            {
                "name": "prod",
                "state": "Running",
                "clusters": [
                    {"name": "a", "state": "Paused"},
                    {"name": "b", "state": "Running"},
                    {"name": "c", "state": "Paused"},
                ],
            }
        ],
        iterations=[
            {"number": 1, "stage": "prod", "cluster": "a", "decision": "iterate"},
            {"number": 2, "stage": "prod", "cluster": "a", "decision": "pause"},
            {"number": 1, "stage": "prod", "cluster": "c", "decision": "pause"},
            {"number": 3, "stage": "prod", "cluster": "b", "decision": "iterate"},
        ],
    )


def test_context_pairs_become_a_dict_and_a_pair_without_equals_is_a_usage_error() -> None:
    assert actions.parse_context(["a=1", "b=x=y", "a=2", "c="]) == {"a": "2", "b": "x=y", "c": ""}
    with pytest.raises(CliError) as err:
        actions.parse_context(["oops"])
    assert err.value.code is ExitCode.USAGE


def test_a_manual_run_is_named_after_its_loop_and_the_time_and_records_who_started_it() -> None:
    request = actions.manual_run("nightly", {"t": "1"}, "alice", NOW)
    assert request.name == "nightly-manual-20260301-120000"
    assert request.annotations == {"kloop.dev/started-by": "alice"}
    assert actions.manual_run("x" * 63, {}, None, NOW).name.__len__() <= 63


def test_approve_takes_the_stage_the_run_waits_at_unless_one_is_named() -> None:
    waiting = a_run(phase="AwaitingApproval", stage="prod", stages=[{"name": "prod"}])
    assert actions.stage_to_approve(waiting, None) == "prod"
    running = a_run(phase="Running", stage="dev", stages=[{"name": "dev"}, {"name": "prod"}])
    assert actions.stage_to_approve(running, "prod") == "prod"  # ahead of time
    for run, stage in ((running, None), (running, "qa")):
        with pytest.raises(CliError) as err:
            actions.stage_to_approve(run, stage)
        assert err.value.code is ExitCode.USAGE


def test_an_approval_adds_the_stage_to_earlier_ones_and_names_the_user() -> None:
    run = a_run(annotations={"kloop.dev/approve": "dev"})
    assert actions.approval(run, "prod", "alice") == {
        "kloop.dev/approve": "dev,prod",
        "kloop.dev/approved-by": "alice",
    }
    assert actions.approval(run, "dev", "alice")["kloop.dev/approve"] == "dev"


def test_resume_finds_the_iteration_each_paused_target_stopped_at() -> None:
    run = paused_run()
    assert actions.paused_iterations(run) == [1, 2]
    with pytest.raises(CliError, match="several paused iterations"):
        actions.iteration_to_resume(run, None)
    assert actions.iteration_to_resume(run, 2) == 2
    with pytest.raises(CliError, match="iteration 3 of r1 is not paused"):
        actions.iteration_to_resume(run, 3)
    with pytest.raises(CliError, match="has no paused iteration"):
        actions.iteration_to_resume(a_run(phase="Running"), None)
    resumed = a_run(annotations={"kloop.dev/resume": "1"})
    assert actions.resumption(resumed, 2, "bob") == {
        "kloop.dev/resume": "1,2",
        "kloop.dev/resumed-by": "bob",
    }


def test_log_selection_narrows_by_label_and_orders_pods_by_creation() -> None:
    assert actions.pod_selector("r1", 2, "checker", "a") == (
        "kloop.dev/run=r1,kloop.dev/iteration=2,kloop.dev/role=checker,kloop.dev/cluster=a"
    )
    assert actions.pod_selector("r1", None, None, None) == "kloop.dev/run=r1"
    pods = [
        {"metadata": {"name": "b", "creationTimestamp": "2026-03-01T10:00:01Z"}},
        {"metadata": {"name": "c", "creationTimestamp": "2026-03-01T10:00:00Z"}},
        {"metadata": {"name": "a", "creationTimestamp": "2026-03-01T10:00:01Z"}},
    ]
    assert [p["metadata"]["name"] for p in actions.oldest_first(pods)] == ["c", "a", "b"]


@pytest.mark.parametrize(
    ("phase", "code"),
    [("Succeeded", 0), ("Failed", 10), ("Halted", 11)],
)
def test_a_finished_runs_phase_is_the_exit_code(phase: str, code: int) -> None:
    assert outcome_code(phase) == code


def test_a_run_is_finished_only_once_its_teardown_is_over() -> None:
    assert not actions.is_finished(a_run(phase="Halted", teardown={"state": "Running"}))
    assert actions.is_finished(a_run(phase="Halted", teardown={"state": "Succeeded"}))
    assert not actions.is_finished(a_run(phase="Paused"))


def _text(renderable: Any) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_describe_shows_each_iteration_with_maker_verdicts_decision_and_why() -> None:
    run = a_run(
        phase="Succeeded",
        usage={"tokens": 200, "costUSD": 0.02, "wallSeconds": 12.4},
        stages=[{"name": "s", "state": "Passed", "approvedBy": "alice", "clusters": []}],
        iterations=[
            {
                "number": 1,
                "stage": "s",
                "cluster": "local",
                "maker": {"outcome": "changed", "summary": "wrote [red]x[/red]"},
                "checkers": [{"name": "tests", "verdict": "fail", "reasons": ["a", "b"]}],
                "decision": "iterate",
                "why": "tests failed",
            }
        ],
    )
    text = _text(render.describe_run(run))
    assert "200 tokens, $0.0200, 12s" in text
    assert "approved by alice" in text
    assert "changed: wrote [red]x[/red]" in text  # data is never read as markup
    assert "tests: fail — a; b" in text
    assert "iterate" in text and "tests failed" in text


def test_tables_and_dumps_look_like_kubectl() -> None:
    text = _text(render.runs_table([a_run(phase="Running", iteration=2)], NOW))
    header, row = text.splitlines()[:2]
    assert header.split() == [
        "NAME",
        "LOOP",
        "PHASE",
        "STAGE",
        "ITERATION",
        "VERDICT",
        "TOKENS",
        "COST",
        "AGE",
    ]
    assert row.split() == ["r1", "nightly", "Running", "-", "2", "-", "0", "$0.0000", "5m"]
    dumped = yaml.safe_load(render.dump(render.as_list([a_run()]), "yaml"))
    assert "managedFields" not in dumped["items"][0]["metadata"]
    assert render.age("2026-03-01T11:59:30Z", NOW) == "30s"
    assert render.age("2026-02-27T12:00:00Z", NOW) == "2d"


COMMANDS = ["get", "describe", "run", "approve", "abort", "resume", "memory", "logs", "watch"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    examples = result.output.split("Examples", 1)
    assert len(examples) == 2 and f"kubectl kloop {command}" in examples[1], result.output
