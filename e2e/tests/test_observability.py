"""A real Prometheus scraping a real operator answers every query of the dashboard and alerts.

Prometheus (Debian's package) runs on 127.0.0.1 with its own storage, scraping the operator's
/metrics every second and loading the chart's rules file, while four runs go their ways: one
approved and Succeeded (with a webhook notification), one Halted on MaxIterations, one waiting
for approval and one Running a long maker. Then every PromQL expression is read from the shipped
files (so a new panel or alert is covered without touching this test) and asked:

- a dashboard query must return at least one series with a finite value (``$namespace`` is
  ``.*``, ``$__rate_interval`` and ``$__range`` are WINDOW);
- an alert expression must evaluate; each metric selector in it must return series; and when it
  ends with a threshold (``expr > N``), the expression without it must return series. Alerts
  are conditions that rightly stay empty here (the operator is up), so the threshold is dropped
  rather than the data faked. KloopRunHalted, whose run did halt, must return that run.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.dashboard import OUT as DASHBOARD
from e2e.dashboard import expressions
from e2e.helpers import wait_for
from e2e.loops import GROUP, VERSION, create_loop, get_run, greeting_loop, start_run, wait_finished
from e2e.operator_process import OperatorProcess
from e2e.procs import free_port
from e2e.prometheus import PrometheusServer, selectors, without_threshold
from e2e.webhook import receiver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

RULES = DASHBOARD.parents[1] / "prometheus/rules.yaml"
WINDOW = "10m"
Json = dict[str, Any]


def alert_rules() -> list[Json]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard_queries() -> list[str]:
    grafana = {"$namespace": ".*", "$__rate_interval": WINDOW, "$__range": WINDOW}
    queries = []
    for expr in expressions(DASHBOARD.read_text()):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        queries.append(expr)
    return queries


def _loops(namespace: str, hook_secret: str) -> list[Json]:
    approved = greeting_loop()
    approved["metadata"]["name"] = "approved"
    approved["spec"]["stages"] = [{"name": "prod", "clusters": ["local"], "requireApproval": True}]
    approved["spec"]["notify"] = [
        {
            "name": "ops",
            "urlSecretRef": {"name": hook_secret, "key": "url"},
            "events": ["awaiting-approval", "succeeded"],
        }
    ]
    short = greeting_loop()
    short["metadata"]["name"] = "short"
    short["spec"]["budget"] = {"maxIterations": 2, "maxCostUSD": 1.0, "deadlineSeconds": 900}
    slow = greeting_loop()
    slow["metadata"]["name"] = "slow"
    slow["spec"]["maker"]["timeoutSeconds"] = 900
    slow["spec"]["maker"]["template"]["spec"]["containers"][0]["args"] = ["sleep 600"]
    slow["spec"]["budget"] = {"maxIterations": 1, "maxTokens": 1000, "deadlineSeconds": 3600}
    slow["spec"].pop("teardown")
    return [approved, short, slow]


def _phase(api: client.ApiClient, namespace: str, run: str) -> str | None:
    phase: str | None = (get_run(api, namespace, run).get("status") or {}).get("phase")
    return phase


def _approve(api: client.ApiClient, namespace: str, run: str) -> None:
    review = client.AuthenticationV1Api(api).create_self_subject_review(
        client.V1SelfSubjectReview()
    )
    annotations = {
        "kloop.dev/approve": "prod",
        "kloop.dev/approved-by": str(review.status.user_info.username),
    }
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "loopruns", run, {"metadata": {"annotations": annotations}}
    )


def _is_phase(api: client.ApiClient, namespace: str, run: str, phase: str) -> bool:
    return _phase(api, namespace, run) == phase


def _answer(what: str, prometheus: PrometheusServer, expr: str, finite: bool = False) -> list[Json]:
    """The series ``expr`` returns (with a finite value when ``finite``), waiting up to 20s."""

    def probe() -> list[Json]:
        result = prometheus.query(expr)
        if finite:
            return [s for s in result if math.isfinite(float(s["value"][1]))]
        return result

    return wait_for(what, probe, timeout=20, every=1)


def test_prometheus_answers_every_dashboard_and_alert_query_during_real_runs(
    cluster: Path,
    kloop_crds: list[str],
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    port = free_port()
    operator = OperatorProcess(
        cluster,
        tmp_path / "operator.log",
        [namespace],
        ["--metrics-port", str(port), "--allow-egress-cidr", "127.0.0.0/8"],
    )
    prometheus = PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{port}"], RULES)
    operator.start()
    try:
        prometheus.start()
        with receiver("/hook") as hook:
            client.CoreV1Api(api_client).create_namespaced_secret(
                namespace, {"metadata": {"name": "hook"}, "stringData": {"url": hook.url}}
            )
            for body in _loops(namespace, "hook"):
                create_loop(api_client, namespace, body)
            for loop, run in [
                ("approved", "approved"),
                ("approved", "waiting"),
                ("short", "short"),
                ("slow", "slow"),
            ]:
                start_run(api_client, namespace, loop, run)
            for run in ("approved", "waiting"):
                awaiting = partial(_is_phase, api_client, namespace, run, "AwaitingApproval")
                wait_for(f"{run} to await approval", awaiting, timeout=60)
            time.sleep(3)  # a wait worth measuring
            _approve(api_client, namespace, "approved")
            assert wait_finished(api_client, namespace, "approved")["status"]["phase"] == (
                "Succeeded"
            )
            short = wait_finished(api_client, namespace, "short")["status"]
            assert (short["phase"], short["haltReason"]) == ("Halted", "MaxIterations")
            assert _phase(api_client, namespace, "slow") == "Running"
            assert _phase(api_client, namespace, "waiting") == "AwaitingApproval"
            wait_for("the notifications", lambda: len(hook.deliveries) >= 3, timeout=30)

        def scraped() -> bool:
            finished = prometheus.query('sum(kloop_runs{phase=~"Succeeded|Halted"})')
            return bool(finished) and float(finished[0]["value"][1]) == 2

        wait_for("Prometheus to scrape the finished runs", scraped, timeout=30)
        time.sleep(2)  # one more scrape of every series

        answers: dict[str, list[Json]] = {}
        for expr in dashboard_queries():
            answers[expr] = _answer(f"data for dashboard query {expr}", prometheus, expr, True)
        for rule in alert_rules():
            prometheus.query(rule["expr"])  # it evaluates (a PromQL error raises)
            for selector in selectors(rule["expr"]):
                what = f"{rule['alert']}: data for {selector}"
                answers[selector] = _answer(what, prometheus, selector)
            inner = without_threshold(rule["expr"])
            if inner is not None:
                answers[inner] = _answer(f"{rule['alert']}: data for {inner}", prometheus, inner)

        halted = prometheus.query(
            next(r["expr"] for r in alert_rules() if r["alert"] == "KloopRunHalted")
        )
        assert [(s["metric"]["loop"], s["metric"]["reason"]) for s in halted] == [
            ("short", "MaxIterations")
        ]
        down = next(r["expr"] for r in alert_rules() if r["alert"] == "KloopOperatorDown")
        assert prometheus.query(down) == [], "the operator is up"
        rules = prometheus.query_rules()
        assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
        assert all(r["health"] == "ok" for r in rules), rules
        print(_table(answers, namespace))
    finally:
        prometheus.stop()
        operator.stop()
        print(f"--- operator log (tail) ---\n{operator.log_tail(30)}")


def _table(answers: dict[str, list[Json]], namespace: str) -> str:
    """The answers as a markdown table (pasted into docs/observability.md)."""
    lines = ["| query | series | example |", "|---|---|---|"]
    for expr, result in answers.items():
        sample = max(result, key=lambda s: float(s["value"][1]))  # the most telling one
        labels = {k: v for k, v in sample["metric"].items() if k not in ("instance", "job")}
        labels.pop("__name__", None)
        shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())).replace(namespace, "<ns>")
        value = float(sample["value"][1])
        lines.append(f"| `{expr}` | {len(result)} | {{{shown}}} = {value:.4g} |")
    return "\n".join(lines)
