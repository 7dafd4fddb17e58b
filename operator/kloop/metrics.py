"""Every Prometheus metric kloop exports, in one place (served on :8080/metrics by default).

Counts are derived from what a reconcile changed in status (``record_transition``), so a metric
moves exactly when the LoopRun's status does, whoever restarted in between.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

from kloop.api.looprun import LoopRunStatus

ITERATIONS = Counter("kloop_iterations_total", "Iterations started.", ["namespace", "loop"])
VERDICTS = Counter(
    "kloop_verdicts_total",
    "Checker verdicts recorded.",
    ["namespace", "loop", "checker", "verdict"],
)
RUNS_FINISHED = Counter(
    "kloop_runs_finished_total",
    "Runs that reached a final phase, by phase and halt reason.",
    ["namespace", "loop", "phase", "reason"],
)
TOKENS = Counter("kloop_tokens_total", "Tokens reported by agents.", ["namespace", "loop"])
COST = Counter("kloop_cost_usd_total", "Cost in USD reported by agents.", ["namespace", "loop"])
NOTIFICATIONS = Counter(
    "kloop_notifications_total",
    "Notification deliveries, by notify target, event and result (delivered, failed, refused).",
    ["namespace", "loop", "target", "event", "result"],
)
PODS_CREATED = Counter("kloop_pods_created_total", "Agent pods created.", ["role"])
RUN_DURATION = Histogram(
    "kloop_run_duration_seconds",
    "Wall time of finished runs.",
    ["namespace", "loop"],
    buckets=(10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400),
)
RECONCILE = Histogram(
    "kloop_reconcile_duration_seconds",
    "Time of one observe-decide-apply pass.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def record_transition(
    namespace: str, loop: str, before: LoopRunStatus, after: LoopRunStatus
) -> None:
    """Count what changed between two statuses of one run (written by one reconcile)."""
    known = {r.number for r in before.iterations}
    ITERATIONS.labels(namespace, loop).inc(
        sum(1 for r in after.iterations if r.number not in known)
    )
    previous = {(r.number, c.name) for r in before.iterations for c in r.checkers}
    for record in after.iterations:
        for checker in record.checkers:
            if (record.number, checker.name) not in previous:
                VERDICTS.labels(namespace, loop, checker.name, checker.verdict).inc()
    TOKENS.labels(namespace, loop).inc(max(0, after.usage.tokens - before.usage.tokens))
    COST.labels(namespace, loop).inc(max(0.0, after.usage.cost_usd - before.usage.cost_usd))
    finished_now = after.phase is not None and after.phase.finished and before.phase != after.phase
    if finished_now and after.phase is not None:
        RUNS_FINISHED.labels(namespace, loop, after.phase.value, after.halt_reason or "").inc()
        RUN_DURATION.labels(namespace, loop).observe(after.usage.wall_seconds)


def serve(port: int) -> None:
    """Serve /metrics on ``port`` (all paths answer with the metrics)."""
    start_http_server(port)
