"""Generate the chart's Grafana dashboard (charts/kloop/files/grafana/kloop.json) from code.

``make dashboard`` writes it; a unit test checks the committed file is what this code makes, and
the e2e test in e2e/tests/test_observability.py asks a real Prometheus every query it holds.
Queries may use Grafana's ``$namespace``, ``$__rate_interval`` and ``$__range``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

Json = dict[str, Any]

OUT = Path(__file__).resolve().parents[1] / "charts/kloop/files/grafana/kloop.json"
NS = 'namespace=~"$namespace"'
WIDTH, HEIGHT = 12, 8


def target(expr: str, legend: str, ref: str) -> Json:
    return {
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
    }


def panel(
    title: str,
    description: str,
    queries: list[tuple[str, str]],
    unit: str = "short",
    kind: str = "timeseries",
    stacked: bool = False,
) -> Json:
    """A panel; its grid position is set by ``dashboard`` (two panels per row)."""
    custom: Json = {"drawStyle": "line", "fillOpacity": 10}
    if stacked:
        custom = {"drawStyle": "bars", "fillOpacity": 60, "stacking": {"mode": "normal"}}
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {
            "defaults": {"unit": unit, **({"custom": custom} if kind == "timeseries" else {})},
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]}
        }
        if kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"]}, "orientation": "horizontal"},
        "targets": [
            target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)
        ],
    }


def increase(metric: str, by: str, window: str = "$__rate_interval", match: str = NS) -> str:
    """How much a counter grew per ``by`` group over ``window``."""
    return f"sum by ({by}) (increase({metric}{{{match}}}[{window}]))"


def quantile(q: float, metric: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{NS}}}[$__rate_interval])))"


PANELS = [
    panel(
        "Runs by phase",
        "LoopRuns the operator knows, by phase (kloop_runs; finished runs count until deleted).",
        [(f"sum by (phase) (kloop_runs{{{NS}}})", "{{phase}}")],
        stacked=True,
    ),
    panel(
        "Iterations started",
        "Iterations started per Loop.",
        [
            (
                increase("kloop_iterations_total", "namespace, loop"),
                "{{namespace}}/{{loop}}",
            )
        ],
        stacked=True,
    ),
    panel(
        "Checker verdicts",
        "Verdicts recorded, by verdict (pass, fail, inconclusive, error).",
        [
            (
                increase("kloop_verdicts_total", "verdict"),
                "{{verdict}}",
            )
        ],
        stacked=True,
    ),
    panel(
        "Tokens",
        "Tokens agents reported, per Loop.",
        [
            (
                increase("kloop_tokens_total", "namespace, loop"),
                "{{namespace}}/{{loop}}",
            )
        ],
        stacked=True,
    ),
    panel(
        "Cost (USD)",
        "Cost agents reported, per Loop.",
        [
            (
                increase("kloop_cost_usd_total", "namespace, loop"),
                "{{namespace}}/{{loop}}",
            )
        ],
        unit="currencyUSD",
        stacked=True,
    ),
    panel(
        "Time per iteration",
        "Wall time of ended iterations, maker pod creation to decision (p50 and p90).",
        [
            (quantile(0.5, "kloop_iteration_duration_seconds"), "p50"),
            (quantile(0.9, "kloop_iteration_duration_seconds"), "p90"),
        ],
        unit="s",
    ),
    panel(
        "Halts by reason",
        "Runs that halted in the dashboard's time range, by halt reason.",
        [
            (
                increase(
                    "kloop_runs_finished_total", "reason", "$__range", f'phase="Halted", {NS}'
                ),
                "{{reason}}",
            )
        ],
        kind="bargauge",
    ),
    panel(
        "Budget used (unfinished runs)",
        "Used fraction of each cap of each unfinished run; the run halts at 100%.",
        [
            (
                f"max by (namespace, run, cap) (kloop_run_budget_used_ratio{{{NS}}})",
                "{{namespace}}/{{run}} {{cap}}",
            )
        ],
        unit="percentunit",
    ),
    panel(
        "Waiting for approval",
        "How long each run has waited for a stage approval, and the mean wait of approved stages.",
        [
            (
                f"max by (namespace, run, stage) (kloop_run_approval_waiting_seconds{{{NS}}})",
                "{{namespace}}/{{run}} {{stage}}",
            ),
            (
                f"sum by (namespace, loop) (kloop_approval_wait_seconds_sum{{{NS}}}) / "
                f"sum by (namespace, loop) (kloop_approval_wait_seconds_count{{{NS}}})",
                "mean approved wait {{namespace}}/{{loop}}",
            ),
        ],
        unit="s",
    ),
    panel(
        "Time since last progress",
        "Seconds since each Pending or Running run last moved on (KloopRunStuck fires at 30m).",
        [
            (
                "time() - max by (namespace, run) "
                f"(kloop_run_last_progress_timestamp_seconds{{{NS}}})",
                "{{namespace}}/{{run}}",
            )
        ],
        unit="s",
    ),
    panel(
        "Notifications",
        "Notification deliveries by result (delivered, failed, refused).",
        [
            (
                increase("kloop_notifications_total", "result"),
                "{{result}}",
            )
        ],
        stacked=True,
    ),
    panel(
        "Reconcile passes",
        "Latency of observe-decide-apply passes (95th percentile) and failed passes.",
        [
            (
                "histogram_quantile(0.95, sum by (le) "
                "(rate(kloop_reconcile_duration_seconds_bucket[$__rate_interval])))",
                "p95 seconds",
            ),
            (
                "sum by (kind, reason) (increase(kloop_reconcile_errors_total[$__rate_interval]))",
                "errors {{kind}} {{reason}}",
            ),
        ],
    ),
    panel(
        "Agent pods created",
        "Pods the operator created, by role.",
        [("sum by (role) (increase(kloop_pods_created_total[$__rate_interval]))", "{{role}}")],
        stacked=True,
    ),
]


def dashboard() -> Json:
    """The whole dashboard: a datasource and a namespace variable, then the panels."""
    panels = []
    for i, p in enumerate(PANELS):
        panels.append(
            {
                "id": i + 1,
                "gridPos": {"x": (i % 2) * WIDTH, "y": (i // 2) * HEIGHT, "w": WIDTH, "h": HEIGHT},
                **p,
            }
        )
    return {
        "uid": "kloop",
        "title": "kloop",
        "description": "kloop runs: phases, iterations, verdicts, budgets, approvals, halts.",
        "tags": ["kloop"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Data source",
                },
                {
                    "name": "namespace",
                    "type": "query",
                    "label": "Namespace",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": {"query": "label_values(kloop_runs, namespace)", "refId": "ns"},
                    "definition": "label_values(kloop_runs, namespace)",
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "refresh": 2,
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


def expressions(text: str) -> list[str]:
    """Every PromQL expression in a dashboard JSON (the panels' targets)."""
    return [t["expr"] for p in json.loads(text)["panels"] for t in p.get("targets", [])]


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT} ({len(PANELS)} panels)", file=sys.stderr)
