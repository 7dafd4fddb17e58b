"""The operator's /metrics endpoint counts what a real run did."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from e2e.helpers import wait_for
from e2e.loops import create_loop, greeting_loop, start_run, wait_finished
from e2e.operator_process import OperatorProcess
from e2e.procs import free_port

pytestmark = pytest.mark.e2e


def test_metrics_endpoint_counts_iterations_verdicts_and_outcome(
    cluster: Path,
    kloop_crds: list[str],
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    port = free_port()
    operator = OperatorProcess(
        cluster, tmp_path / "operator.log", [namespace], ["--metrics-port", str(port)]
    )
    operator.start()
    try:
        create_loop(api_client, namespace, greeting_loop())
        start_run(api_client, namespace, "greeting", "counted")
        assert wait_finished(api_client, namespace, "counted")["status"]["phase"] == "Succeeded"
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape() -> str | None:
            text = httpx.get(url, timeout=5).text
            return text if "kloop_runs_finished_total{" in text else None

        text = wait_for("metrics of the finished run", scrape, timeout=20)
    finally:
        operator.stop()
    ns = {"namespace": namespace, "loop": "greeting"}
    assert sample(text, "kloop_iterations_total", **ns) == 3
    assert sample(text, "kloop_tokens_total", **ns) == 300
    assert sample(text, "kloop_verdicts_total", **ns, checker="greeting", verdict="fail") == 2
    assert sample(text, "kloop_verdicts_total", **ns, checker="greeting", verdict="pass") == 1
    finished = sample(text, "kloop_runs_finished_total", **ns, phase="Succeeded", reason="")
    assert finished == 1, operator.log_tail()
    assert sample(text, "kloop_pods_created_total", role="maker") == 3
    assert sample(text, "kloop_pods_created_total", role="teardown") == 1
    assert (sample(text, "kloop_reconcile_duration_seconds_count") or 0) > 0


def sample(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from Prometheus text exposition (label order does not matter)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None
