"""The Argo CD health checks (Lua, run by lua5.1) on objects captured from real e2e runs.

The fixtures are written by e2e/tests/test_argocd_health.py with ``KLOOP_CAPTURE_FIXTURES=1``;
that test also runs the same scripts on the live objects. lua5.1 comes from Debian, installed by
the harness when missing (root, apt): so these tests sit with the integration tier.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e.gitops.argocd_health import LOOP_SCRIPT, LOOPRUN_SCRIPT, SCRIPTS, run_health

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "argocd"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "gitops.md"
NOTES = SCRIPTS.parents[1] / "templates" / "NOTES.txt"

EXPECTED = {
    "looprun-new": ("Progressing", "Waiting for the kloop operator to start the run"),
    "looprun-running": ("Progressing", "Running: iteration 1 started"),
    "looprun-pending-loop-missing": (
        "Degraded",
        "Pending, stalled (LoopNotFound): Loop 'missing' not found",
    ),
    "looprun-awaiting-approval": ("Suspended", "Awaiting approval: stage 'prod' awaits approval"),
    "looprun-paused": ("Suspended", "Paused: stage 'default' paused: local inconclusive"),
    "looprun-succeeded": ("Healthy", "Succeeded: every stage passed"),
    "looprun-halted": ("Degraded", "Halted (MaxIterations): default/local: 1 iteration(s)"),
    "looprun-failed": ("Degraded", "Failed (InvalidLoop): stage 'none' selects no cluster"),
    "loop-no-run": ("Healthy", "No run yet"),
    "loop-greeting": ("Healthy", "Newest run ok: Succeeded"),
    "loop-short": ("Degraded", "Newest run halts: Halted"),
    "loop-gated": ("Suspended", "Newest run gated: AwaitingApproval"),
    "loop-unsure": ("Suspended", "Newest run unsure: Paused"),
}


def test_every_captured_object_has_an_expectation() -> None:
    assert {p.stem for p in FIXTURES.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_health_of_captured_object(name: str) -> None:
    obj = json.loads((FIXTURES / f"{name}.json").read_text())
    script = LOOPRUN_SCRIPT if obj["kind"] == "LoopRun" else LOOP_SCRIPT
    status, message = EXPECTED[name]
    health = run_health(script, obj)
    assert health.status == status
    assert health.message.startswith(message), health.message


def test_a_run_whose_new_generation_is_not_observed_yet_is_progressing() -> None:
    obj = json.loads((FIXTURES / "looprun-succeeded.json").read_text())
    obj["metadata"]["generation"] = obj["status"]["observedGeneration"] + 1
    health = run_health(LOOPRUN_SCRIPT, obj)
    assert health.status == "Progressing"
    assert "observe generation" in health.message


def test_a_succeeded_run_still_tearing_down_is_progressing() -> None:
    obj = json.loads((FIXTURES / "looprun-succeeded.json").read_text())
    obj["status"]["teardown"] = {"state": "Running", "pod": "ok-teardown"}
    assert run_health(LOOPRUN_SCRIPT, obj).status == "Progressing"


@pytest.mark.parametrize("script", [LOOPRUN_SCRIPT, LOOP_SCRIPT], ids=lambda p: p.name)
def test_docs_show_the_shipped_script_verbatim(script: Path) -> None:
    """docs/gitops.md's Argo CD snippet is the chart's file, indented under its key."""
    indented = "\n".join(
        f"      {line}" if line else "" for line in script.read_text().splitlines()
    )
    assert indented in DOCS.read_text()
    assert f"files/argocd/{script.name}" in NOTES.read_text()
