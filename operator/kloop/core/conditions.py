"""Summarize: compute kstatus conditions from the run's phase, in one place.

Steps never set conditions; this table does. ``Reconciling`` and ``Stalled`` are present only while
True (kstatus: abnormal-true conditions are removed when they stop applying). A condition keeps its
``lastTransitionTime`` unless its status flips.
"""

from __future__ import annotations

from datetime import datetime

from kloop.api.conditions import Condition, ConditionStatus, ConditionType, Reason
from kloop.api.looprun import LoopRunStatus, Phase

BUDGET_REASONS = {
    Reason.MAX_ITERATIONS.value,
    Reason.TOKEN_BUDGET.value,
    Reason.COST_BUDGET.value,
    Reason.DEADLINE.value,
}

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE


def _desired(
    s: LoopRunStatus, stall_reason: Reason | None
) -> dict[ConditionType, tuple[ConditionStatus, str, str]]:
    message = s.message or ""
    tearing_down = s.teardown is not None and s.teardown.state == "Running"
    wanted: dict[ConditionType, tuple[ConditionStatus, str, str]] = {}
    if s.phase is Phase.SUCCEEDED:
        wanted[ConditionType.READY] = (T, Reason.SUCCEEDED, message)
    elif s.phase in (Phase.HALTED, Phase.FAILED):
        reason = s.halt_reason or Reason.CHECKER_FAILED.value
        wanted[ConditionType.READY] = (F, reason, message)
        wanted[ConditionType.STALLED] = (T, reason, message)
    elif s.phase is Phase.PAUSED:
        wanted[ConditionType.READY] = (F, Reason.INCONCLUSIVE, message)
        wanted[ConditionType.PAUSED] = (T, Reason.INCONCLUSIVE, message)
    elif s.phase is Phase.AWAITING_APPROVAL:
        wanted[ConditionType.READY] = (F, Reason.AWAITING_APPROVAL, message)
        wanted[ConditionType.AWAITING_APPROVAL] = (T, Reason.AWAITING_APPROVAL, message)
    elif s.phase is Phase.RUNNING:
        wanted[ConditionType.READY] = (F, Reason.ITERATING, message)
        wanted[ConditionType.RECONCILING] = (T, Reason.ITERATING, message)
    else:
        wanted[ConditionType.READY] = (F, stall_reason or Reason.PENDING, message)
        if stall_reason is not None:
            wanted[ConditionType.STALLED] = (T, stall_reason, message)
    if tearing_down:
        wanted[ConditionType.RECONCILING] = (T, Reason.TEARING_DOWN, "teardown pod running")
    drifted = [
        f"{c.name}: {c.drifted_objects}"
        for st in s.stages
        for c in st.clusters
        if c.drifted_objects
    ]
    if drifted:
        wanted[ConditionType.DRIFT_DETECTED] = (
            T,
            Reason.DRIFT_EXCEEDED
            if s.halt_reason == Reason.DRIFT_EXCEEDED
            else Reason.DRIFT_DETECTED,
            f"drifted objects by cluster: {', '.join(drifted)}",
        )
    if s.halt_reason in BUDGET_REASONS:
        wanted[ConditionType.BUDGET_EXHAUSTED] = (T, s.halt_reason or "", message)
    return wanted


def summarize(
    s: LoopRunStatus, generation: int, now: datetime, stall_reason: Reason | None = None
) -> None:
    """Replace ``s.conditions`` with the conditions its phase (and a stall reason) imply."""
    previous = {c.type: c for c in s.conditions}
    s.conditions = [
        build_condition(previous, ctype, status, str(reason), message, generation, now)
        for ctype, (status, reason, message) in _desired(s, stall_reason).items()
    ]


def build_condition(
    previous: dict[str, Condition],
    ctype: ConditionType,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> Condition:
    """A condition that keeps its lastTransitionTime unless its status flips."""
    old = previous.get(ctype.value)
    if old is not None and old.status == status:
        since = old.last_transition_time
    else:
        since = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return Condition(
        type=ctype.value,
        status=status,
        reason=reason,
        message=message[:32768],
        last_transition_time=since,
        observed_generation=generation,
    )


STALL_AFTER_ATTEMPTS = 5


def retrying(
    s: LoopRunStatus, generation: int, now: datetime, error: str, attempts: int
) -> list[Condition]:
    """The conditions while a pass keeps failing with a transient error.

    ``Reconciling`` says kloop is retrying and why; after ``STALL_AFTER_ATTEMPTS`` failures in a
    row ``Stalled`` says so too, so ``kubectl describe`` and kstatus readers see a run that is
    not moving. The next successful pass recomputes every condition from the phase.
    """
    message = f"attempt {attempts} failed, retrying with backoff: {error}"
    wanted = {ConditionType.RECONCILING: message}
    if attempts >= STALL_AFTER_ATTEMPTS:
        wanted[ConditionType.STALLED] = message
    kept = [c for c in s.conditions if c.type not in {t.value for t in wanted}]
    previous = {c.type: c for c in s.conditions}
    added = [
        build_condition(previous, ctype, T, Reason.RETRYING.value, text, generation, now)
        for ctype, text in wanted.items()
    ]
    return kept + added
