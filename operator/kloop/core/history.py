"""Keep a LoopRun's status bounded by construction, whatever its agents write.

Status holds a few detailed iteration records (``statusIterations`` of the Loop); older ones are
folded into ``status.earlierIterations`` (counts and the last failures). Every record is cut to a
byte budget so that the records together never exceed ``RECORDS_BYTES``: reasons and summaries are
shortened step by step until the record fits. The long history lives in the Loop's memory.

A record is folded only once its iteration is in memory (or when the hard cap is reached), so a
crash between the status write and the memory append never loses an iteration from both.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from kloop.api.looprun import IterationRecord, IterationSummary, LoopRunStatus

STATUS_ITERATIONS_MAX = 100
"""Hard cap on detailed records (the CRD's maxItems for ``status.iterations``): room for the
open iterations of a stage's 64 parallel targets, and the Loop's ``statusIterations``."""
RECORDS_BYTES = 160 * 1024
"""All detailed records together, serialized: well below etcd's 1.5 MiB object limit."""
SLACK = 2
"""Records kept beyond ``statusIterations``: the one just decided (memory not yet written) and the
open one."""
MESSAGE_CHARS = 1024
"""``status.message`` (repeated in up to three conditions) and ``teardown.message``."""
FAILURES_KEPT = 5
FAILURE_CHARS = 256

# (chars per reason, reasons per checker, chars of the maker summary, chars of why), loosest first
_LEVELS = (
    (512, 5, 2048, 1024),
    (256, 3, 1024, 512),
    (128, 2, 512, 256),
    (64, 1, 256, 128),
    (32, 1, 128, 128),
    (0, 0, 64, 64),
)


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut (idempotent)."""
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + "…" if limit > 0 else ""


def record_size(record: IterationRecord) -> int:
    """Bytes of the record as written to the apiserver (JSON, ASCII-escaped: an upper bound)."""
    return len(json.dumps(record.to_kube()))


def _shorten(record: IterationRecord, level: tuple[int, int, int, int]) -> bool:
    """Apply one level of caps; True when anything was cut."""
    reason_chars, reasons_kept, summary_chars, why_chars = level
    cut = False
    for checker in [*record.checkers, *record.retried]:
        reasons = [truncate(r, reason_chars) for r in checker.reasons[:reasons_kept]]
        reasons = [r for r in reasons if r]
        if reasons != checker.reasons:
            checker.reasons, cut = reasons, True
    if record.maker is not None:
        summary = truncate(record.maker.summary, summary_chars)
        if summary != record.maker.summary:
            record.maker.summary, cut = summary, True
    if record.why is not None:
        why = truncate(record.why, why_chars)
        if why != record.why:
            record.why, cut = why, True
    return cut


def fit_record(record: IterationRecord, budget: int) -> None:
    """Shorten the record's reasons, summary and why until it fits ``budget`` bytes.

    The first level always applies (no single reason or summary is stored in full beyond it);
    tighter levels apply only while the record is too big. A record cut anywhere says so
    (``truncated``). Idempotent: a record that fits is left as it is.
    """
    for level in _LEVELS:
        if _shorten(record, level):
            record.truncated = True
        if record_size(record) <= budget:
            return


def _fold(summary: IterationSummary, record: IterationRecord) -> None:
    summary.iterations += 1
    summary.last_iteration = record.number
    if record.decision == "succeed":
        summary.passed += 1
        return
    summary.failed += 1
    where = f"#{record.number} ({record.stage}/{record.cluster})"
    line = truncate(f"{where}: {record.decision}: {record.why or ''}", FAILURE_CHARS)
    summary.last_failures = [*summary.last_failures, line][-FAILURES_KEPT:]


def bound_status(
    status: LoopRunStatus,
    keep: int | None,
    remembered: Collection[int],
    protected: Collection[int] = (),
) -> None:
    """Fold the oldest records beyond ``keep`` into the summary, then fit each to its budget.

    ``keep`` None (no usable Loop) only enforces the hard cap. A record is folded when it is in
    memory (``remembered``), is decided, and is not ``protected`` (the records targets still
    running read their feedback from); beyond ``STATUS_ITERATIONS_MAX`` the oldest is folded
    regardless. The byte budget is shared by the records that remain.
    """
    records = status.iterations
    limit = STATUS_ITERATIONS_MAX if keep is None else keep

    def foldable(record: IterationRecord) -> bool:
        return (
            record.decision is not None
            and record.number in remembered
            and record.number not in protected
        )

    while any(r.decision is not None for r in records) and (
        len(records) > STATUS_ITERATIONS_MAX
        or (len(records) > limit and any(foldable(r) for r in records))
    ):
        # an open iteration is never folded: its target is still running on it
        candidates = (
            [r for r in records if foldable(r)] if len(records) <= STATUS_ITERATIONS_MAX else []
        )
        oldest = candidates[0] if candidates else next(r for r in records if r.decision is not None)
        records.remove(oldest)
        status.earlier_iterations = status.earlier_iterations or IterationSummary()
        _fold(status.earlier_iterations, oldest)
    if keep is not None:
        budget = RECORDS_BYTES // max(min(keep + SLACK, STATUS_ITERATIONS_MAX), len(records), 1)
        for record in records:
            fit_record(record, budget)
    if status.message is not None:
        status.message = truncate(status.message, MESSAGE_CHARS)
    if status.teardown is not None and status.teardown.message is not None:
        status.teardown.message = truncate(status.teardown.message, MESSAGE_CHARS)
