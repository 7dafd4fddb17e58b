"""Turn an observed pod into a maker outcome or checker verdict, with a reason a human reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from kloop.api.conditions import Reason
from kloop.api.looprun import CheckerRecord, MakerRecord
from kloop.api.results import InvalidResult, parse_checker_result, parse_maker_result
from kloop.core.model import ObservedPod
from kloop.core.workspace import checkout_error

ERROR = "error"

# Waiting reasons that will not fix themselves: fail fast instead of waiting for the timeout.
STUCK_REASONS = frozenset(
    {
        "ErrImageNeverPull",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


@dataclass(frozen=True)
class PodError:
    """Why a pod's result cannot be used."""

    reason: Reason
    message: str


def pod_error(pod: ObservedPod, timeout_seconds: int, now: datetime, who: str) -> PodError | None:
    """The error a pod ended in (or is stuck in), if any; None while it may still succeed."""
    checkout = checkout_error(pod)
    if checkout is not None:  # its agent never ran: the workspace says why
        return PodError(*checkout)
    if pod.phase == "Failed":
        if pod.reason == "Rejected":
            return PodError(
                Reason.POD_REJECTED, f"{who} pod was rejected by the apiserver: {pod.message}"
            )
        if pod.reason == "Untrusted":
            return PodError(Reason.UNTRUSTED_POD, pod.message or f"{who} pod is not trusted")
        if pod.reason == "OOMKilled":
            return PodError(
                Reason.OOM_KILLED, f"{who} was OOMKilled: raise its memory limit or use less"
            )
        if pod.reason == "DeadlineExceeded":
            return PodError(
                Reason.TIMED_OUT, f"{who} ran longer than its timeoutSeconds={timeout_seconds}"
            )
        if pod.reason == "Evicted":
            return PodError(Reason.POD_FAILED, f"{who} was evicted: {pod.message or 'no detail'}")
        # the agent's termination message file (or, opted in, its log tail); often empty on a crash
        tail = (pod.message or "").strip()[-300:]
        detail = f": {tail}" if tail else ""
        if pod.exit_code is None:  # the container never reported an exit: say what is known
            return PodError(
                Reason.POD_FAILED, f"{who} failed ({pod.reason or 'no reason given'}){detail}"
            )
        return PodError(Reason.POD_FAILED, f"{who} exited with code {pod.exit_code}{detail}")
    if pod.phase in ("Pending", "Running", "Unknown"):
        if pod.reason in STUCK_REASONS:
            return PodError(Reason.POD_FAILED, f"{who} cannot start: {pod.reason}")
        if pod.created_at is not None:
            elapsed = (now - pod.created_at).total_seconds()
            if elapsed > timeout_seconds:
                return PodError(
                    Reason.TIMED_OUT,
                    f"{who} ran {elapsed:.0f}s, longer than its timeoutSeconds={timeout_seconds}",
                )
    return None


T = TypeVar("T")


def _ended(
    pod: ObservedPod,
    timeout_seconds: int,
    now: datetime,
    who: str,
    parse: Callable[[str | None], T],
) -> T | PodError | None:
    """The pod's parsed result, or why there is none (an error), or None while it may still end."""
    error = pod_error(pod, timeout_seconds, now, who)
    if error is not None:
        return error
    if pod.phase != "Succeeded":
        return None
    try:
        return parse(pod.message)
    except InvalidResult as err:
        return PodError(Reason.INVALID_AGENT_OUTPUT, str(err))


def assess_maker(pod: ObservedPod, timeout_seconds: int, now: datetime) -> MakerRecord | None:
    """The maker's record once its pod ended (or failed, or timed out); None while it runs."""
    result = _ended(pod, timeout_seconds, now, "maker", parse_maker_result)
    if result is None:
        return None
    if isinstance(result, PodError):
        return MakerRecord(
            pod=pod.name, outcome=ERROR, summary=result.message, error_reason=result.reason.value
        )
    if result.error is not None:  # the agent ran, spent tokens, and says why it has no answer
        return MakerRecord(
            pod=pod.name,
            outcome=ERROR,
            summary=f"maker: {result.error.message}" if result.error.message else "maker failed",
            error_reason=result.error.reason.value,
            tokens=result.tokens,
            cost_usd=result.cost_usd,
        )
    return MakerRecord(
        pod=pod.name,
        outcome=result.outcome.value,
        summary=result.summary,
        tokens=result.tokens,
        cost_usd=result.cost_usd,
    )


def assess_checker(
    name: str, pod: ObservedPod, timeout_seconds: int, now: datetime
) -> CheckerRecord | None:
    """A pod checker's verdict once its pod ended; None while it runs."""
    result = _ended(pod, timeout_seconds, now, f"checker {name!r}", parse_checker_result)
    if result is None:
        return None
    if isinstance(result, PodError):
        return CheckerRecord(
            name=name, verdict=ERROR, reasons=[result.message], error_reason=result.reason.value
        )
    if result.error is not None:
        return CheckerRecord(
            name=name,
            verdict=ERROR,
            reasons=[f"checker {name!r}: {result.error.message}"[:1024]],
            error_reason=result.error.reason.value,
            tokens=result.tokens,
            cost_usd=result.cost_usd,
        )
    return CheckerRecord(
        name=name,
        verdict=result.verdict.value,
        reasons=list(result.reasons),
        score=result.score,
        tokens=result.tokens,
        cost_usd=result.cost_usd,
    )
