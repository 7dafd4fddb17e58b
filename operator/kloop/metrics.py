"""Every Prometheus metric kloop exports, in one place (served on :8080/metrics by default).

Counts are derived from what a reconcile changed in status (``record_transition``), so a metric
moves exactly when the LoopRun's status does, whoever restarted in between. Per-run gauges are
computed at scrape time from the runs the operator knows (``RUNS``), so a run that changes phase
or is deleted never leaves a stale series behind. See docs/observability.md.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from kloop.api.conditions import Reason
from kloop.api.loop import LoopSpec
from kloop.api.looprun import (
    LoopRunSpec,
    LoopRunStatus,
    NotificationResult,
    Phase,
    RecordedVerdict,
)
from kloop.core import usage

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
API_REQUESTS = Counter(
    "kloop_api_requests_total",
    "Kubernetes API requests made by kloop's client (not kopf's watches), by verb and resource.",
    ["verb", "resource"],
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
    "Time of one observe-decide-apply pass, failed passes included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter(
    "kloop_reconcile_errors_total",
    "Failed reconcile passes: kind transient (retried with backoff) or permanent (a write the "
    "apiserver refused for good), with a bounded reason.",
    ["kind", "reason"],
)
ITERATION_DURATION = Histogram(
    "kloop_iteration_duration_seconds",
    "Wall time of ended iterations, from the maker pod's creation to the decision.",
    ["namespace", "loop"],
    buckets=(5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600),
)
APPROVAL_WAIT = Histogram(
    "kloop_approval_wait_seconds",
    "Time stages waited in AwaitingApproval before they were approved.",
    ["namespace", "loop"],
    buckets=(10, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400),
)

# The halt reasons of DESIGN.md §3: their series exist (at 0) as soon as a Loop has a run, so the
# first halt of a kind shows as an increase (a counter born at 1 would not).
HALT_REASONS = tuple(
    r.value
    for r in (
        Reason.MAX_ITERATIONS,
        Reason.TOKEN_BUDGET,
        Reason.COST_BUDGET,
        Reason.DEADLINE,
        Reason.DRIFT_EXCEEDED,
        Reason.CHECKER_FAILED,
        Reason.ORACLE_REFUSED,
        Reason.ABORTED,
        Reason.INVALID_AGENT_OUTPUT,
        Reason.CONNECTOR_UNAVAILABLE,
    )
)
TRANSIENT_REASONS = (
    "Conflict",
    "TooManyRequests",
    "NotFound",
    "Forbidden",
    "Unauthorized",
    "Invalid",
    "ClientError",
    "ServerError",
    "Timeout",
    "Connection",
    "Other",
)
PERMANENT_REASONS = (Reason.STATUS_REJECTED.value, Reason.MEMORY_REJECTED.value)
for _reason in TRANSIENT_REASONS:  # zero series, so alerts see the first error as an increase
    RECONCILE_ERRORS.labels("transient", _reason)
for _reason in PERMANENT_REASONS:
    RECONCILE_ERRORS.labels("permanent", _reason)
_BY_STATUS = {
    409: "Conflict",
    429: "TooManyRequests",
    404: "NotFound",
    403: "Forbidden",
    401: "Unauthorized",
    422: "Invalid",
}


def error_reason(err: BaseException) -> str:
    """A failed pass's error as one of TRANSIENT_REASONS (never its text: bounded labels)."""
    status = getattr(err, "status", None)
    if isinstance(status, int) and status:
        if status in _BY_STATUS:
            return _BY_STATUS[status]
        return "ServerError" if status >= 500 else "ClientError"
    if isinstance(err, TimeoutError):
        return "Timeout"
    names = {cls.__name__ for cls in type(err).__mro__}
    if isinstance(err, ConnectionError | OSError) or names & {"MaxRetryError", "ProtocolError"}:
        return "Connection"
    return "Other"


def record_reconcile_error(kind: str, reason: str) -> None:
    """Count one failed pass."""
    RECONCILE_ERRORS.labels(kind, reason).inc()


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
    ended = {r.number for r in before.iterations if r.decision is not None}
    for record in after.iterations:
        seconds = usage.iteration_seconds(record)
        if seconds is not None and record.number not in ended:
            ITERATION_DURATION.labels(namespace, loop).observe(seconds)
    for wait in usage.approval_waits(before, after):
        APPROVAL_WAIT.labels(namespace, loop).observe(wait)
    finished_now = after.phase is not None and after.phase.finished and before.phase != after.phase
    if finished_now and after.phase is not None:
        RUNS_FINISHED.labels(namespace, loop, after.phase.value, after.halt_reason or "").inc()
        RUN_DURATION.labels(namespace, loop).observe(after.usage.wall_seconds)


def _initialize(namespace: str, loop: str, spec: LoopSpec | None) -> None:
    """Create a Loop's counter series at 0, so their first increase is seen as one."""
    ITERATIONS.labels(namespace, loop)
    TOKENS.labels(namespace, loop)
    COST.labels(namespace, loop)
    RUNS_FINISHED.labels(namespace, loop, Phase.SUCCEEDED.value, "")
    for reason in HALT_REASONS:
        RUNS_FINISHED.labels(namespace, loop, Phase.HALTED.value, reason)
    if spec is None:
        return
    for checker in spec.checkers:
        for verdict in RecordedVerdict:
            VERDICTS.labels(namespace, loop, checker.name, verdict.value)
    for target in spec.notify or []:
        for event in target.events:
            for result in NotificationResult:
                NOTIFICATIONS.labels(namespace, loop, target.name, event.value, result.value)


@dataclass
class _Run:
    """What the gauges need of one LoopRun, as of its last reconcile."""

    namespace: str
    name: str
    loop: str
    phase: Phase
    spec: LoopSpec | None
    run: LoopRunSpec | None
    status: LoopRunStatus | None
    mark: tuple[object, ...]
    progressed: float
    """Unix time the run last moved on (see ``usage.progress_mark``)."""


class RunGauges(Collector):
    """Gauges over the runs the operator knows, computed when Prometheus scrapes.

    ``kloop_runs`` counts every known LoopRun by phase (finished ones until they are deleted);
    the per-run gauges exist only while a run is unfinished, so their series end with the run.
    """

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._loops: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def track(
        self,
        uid: str,
        namespace: str,
        name: str,
        loop: str,
        spec: LoopSpec | None,
        run: LoopRunSpec | None,
        status: LoopRunStatus,
        now: float | None = None,
    ) -> None:
        """Remember a run as a reconcile just wrote it."""
        now = time.time() if now is None else now
        phase = status.phase or Phase.PENDING
        mark = usage.progress_mark(status)
        with self._lock:
            old = self._runs.get(uid)
            if old is not None:
                progressed = now if old.mark != mark else old.progressed
            else:
                seen = usage.last_activity(status)
                progressed = seen.timestamp() if seen is not None else now
            if (namespace, loop) not in self._loops:
                self._loops.add((namespace, loop))
                _initialize(namespace, loop, spec)
            live = not phase.finished  # a finished run keeps only its phase
            self._runs[uid] = _Run(
                namespace,
                name,
                loop,
                phase,
                spec if live else None,
                run if live else None,
                status if live else None,
                mark,
                progressed,
            )

    def forget(self, uid: str) -> None:
        """The run is gone: its series end at the next scrape."""
        with self._lock:
            self._runs.pop(uid, None)

    def collect(self) -> Iterator[Metric]:
        """The gauges as of now (called by prometheus_client on each scrape, in its thread)."""
        with self._lock:
            runs = list(self._runs.values())
        now = datetime.now(UTC)
        phases = GaugeMetricFamily(
            "kloop_runs",
            "LoopRuns the operator knows, by phase.",
            labels=["namespace", "loop", "phase"],
        )
        counts = Tally((r.namespace, r.loop, r.phase.value) for r in runs)
        for namespace, loop in sorted({(r.namespace, r.loop) for r in runs}):
            for phase in Phase:
                phases.add_metric(
                    [namespace, loop, phase.value], counts[namespace, loop, phase.value]
                )
        yield phases
        budget = GaugeMetricFamily(
            "kloop_run_budget_used_ratio",
            "Used fraction of each cap of an unfinished run (1 = spent; the run halts).",
            labels=["namespace", "loop", "run", "cap"],
        )
        waiting = GaugeMetricFamily(
            "kloop_run_approval_waiting_seconds",
            "How long an unfinished run has been waiting for a stage approval.",
            labels=["namespace", "loop", "run", "stage"],
        )
        progress = GaugeMetricFamily(
            "kloop_run_last_progress_timestamp_seconds",
            "Unix time a Pending or Running run last moved on (phase, stage, iteration, result).",
            labels=["namespace", "loop", "run"],
        )
        for r in runs:
            if r.status is None:
                continue
            ids = [r.namespace, r.loop, r.name]
            if r.spec is not None and r.run is not None:
                for cap, used in usage.budget_used(r.spec, r.run, r.status, now).items():
                    budget.add_metric([*ids, cap], used)
            since = usage.awaiting_since(r.status)
            if since is not None:
                seconds = max(0.0, (now - since).total_seconds())
                waiting.add_metric([*ids, r.status.stage or ""], seconds)
            if r.phase in (Phase.PENDING, Phase.RUNNING):
                progress.add_metric(ids, r.progressed)
        yield budget
        yield waiting
        yield progress


RUNS = RunGauges()
REGISTRY.register(RUNS)


def serve(port: int) -> None:
    """Serve /metrics on ``port`` (all paths answer with the metrics)."""
    start_http_server(port)
