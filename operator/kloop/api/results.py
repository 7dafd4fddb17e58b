"""What agents write to /dev/termination-log: one JSON document, versioned, validated here.

Kubernetes keeps at most 4 KiB of a termination message, so results are small by design; anything
bigger belongs in artifacts (URLs or short strings) or in the workspace.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

TERMINATION_MESSAGE_LIMIT = 4096


class MakerOutcome(StrEnum):
    """What the maker says it did."""

    CHANGED = "changed"
    NOTHING_TO_DO = "nothing-to-do"
    FAILED = "failed"


class Verdict(StrEnum):
    """What a checker says of the maker's work."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class AgentErrorReason(StrEnum):
    """Why an agent that ran to the end has no usable answer (the run records it as an error)."""

    INVALID_AGENT_OUTPUT = "InvalidAgentOutput"
    AGENT_FAILED = "AgentFailed"
    """The harness failed (endpoint error, command exit) after earlier attempts spent tokens."""


class AgentError(BaseModel):
    """An agent's own report that it failed, with the tokens it spent still counted.

    ``kloop-agent run`` writes it when the model's answer never matched the schema: the run
    records an error with this reason instead of a verdict or an outcome.
    """

    model_config = ConfigDict(extra="forbid")

    reason: AgentErrorReason
    message: str = Field(default="", max_length=1024)


class _Result(BaseModel):
    # Infinity, NaN and 1e309 (which JSON parsers read as infinity) are refused: they are not
    # valid JSON for the apiserver, and a run's usage or score must stay a real number.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    v: Literal[1] = 1
    """Schema version."""


class MakerResult(_Result):
    """A maker's result (schema v1)."""

    outcome: MakerOutcome
    summary: str = Field(default="", max_length=2048)
    tokens: int = Field(default=0, ge=0, le=10**12)
    cost_usd: float = Field(default=0.0, ge=0, le=10**9, alias="costUSD")
    artifacts: dict[str, Annotated[str, StringConstraints(max_length=1024)]] = Field(
        default_factory=dict
    )
    error: AgentError | None = None
    """Set by an agent that failed after spending tokens: the maker's outcome is an error."""


class DriftReport(BaseModel):
    """Objects a checker found drifted from their desired state."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    objects: int = Field(ge=0)
    details: list[Annotated[str, StringConstraints(max_length=512)]] = Field(default_factory=list)


class CheckerResult(_Result):
    """A checker's result (schema v1)."""

    verdict: Verdict
    score: float | None = None
    reasons: list[Annotated[str, StringConstraints(max_length=1024)]] = Field(
        default_factory=list, max_length=20
    )
    drift: DriftReport | None = None
    tokens: int = Field(default=0, ge=0, le=10**12)
    cost_usd: float = Field(default=0.0, ge=0, le=10**9, alias="costUSD")
    error: AgentError | None = None
    """Set by a checker that failed after spending tokens: its verdict is an error."""


class InvalidResult(ValueError):
    """The termination message is missing or does not match the schema; says why in words."""


def _explain(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        where = ".".join(str(p) for p in e["loc"]) or "document"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


R = TypeVar("R", bound="_Result")


def _parse(model: type[R], who: str, message: str | None) -> R:
    if not message or not message.strip():
        raise InvalidResult(f"the {who} wrote no result to /dev/termination-log")
    try:
        return model.model_validate_json(message)
    except ValidationError as err:
        raise InvalidResult(
            f"{who} result is not valid JSON of schema v1: {_explain(err)}"
        ) from err


def parse_maker_result(message: str | None) -> MakerResult:
    """Validate a maker's termination message, or raise InvalidResult with a readable reason."""
    return _parse(MakerResult, "maker", message)


def parse_checker_result(message: str | None) -> CheckerResult:
    """Validate a checker's termination message, or raise InvalidResult with a readable reason."""
    return _parse(CheckerResult, "checker", message)
