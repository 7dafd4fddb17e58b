"""The documented examples apply cleanly with kubectl, and kubectl shows columns and docs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from e2e.cluster.paths import kubectl as pinned_kubectl

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def kubectl(kubeconfig: Path, *args: str) -> str:
    binary = pinned_kubectl() if pinned_kubectl().exists() else shutil.which("kubectl")
    assert binary, "no kubectl found"
    proc = subprocess.run(
        [str(binary), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_examples_apply_and_show_printer_columns(
    cluster: Path, kloop_crds: list[str], namespace: str
) -> None:
    out = kubectl(cluster, "apply", "-n", namespace, "-f", str(EXAMPLES))
    assert out.count("created") == 5, out
    table = kubectl(cluster, "get", "-n", namespace, "loops,loopruns")
    for column in ("LAST RUN", "PHASE", "SCHEDULE", "STAGE", "ITERATION", "VERDICT", "TOKENS"):
        assert column in table
    assert "0 6 * * 1-5" in table
    loops = kubectl(cluster, "get", "-n", namespace, "loops").splitlines()
    assert loops[0].split()[4:7] == ["SCHEDULE", "SUSPEND", "READY"], loops[0]
    wide = kubectl(cluster, "get", "-n", namespace, "loops", "-o", "wide").splitlines()[0]
    assert "LAST SCHEDULE" in wide and "NEXT SCHEDULE" in wide, wide
    short = kubectl(cluster, "get", "-n", namespace, "lp,lr", "-o", "name")
    assert "loop.kloop.dev/fix-flaky-tests" in short
    assert "looprun.kloop.dev/fix-flaky-tests-1" in short


def test_kubectl_explain_prints_the_model_docstrings(cluster: Path, kloop_crds: list[str]) -> None:
    out = kubectl(cluster, "explain", "loop.spec.budget")
    assert "Total tokens the agents may report before the run halts with TokenBudget." in out
    spec = kubectl(cluster, "explain", "loop.spec")
    assert "The purpose, handed to every agent as KLOOP_GOAL." in spec
