"""What kloop's own workspace containers report: the clone and the push (``kloop-agent workspace``).

Like agents, they write one JSON document to their termination message; the operator reads it
from the pod's init container statuses. Errors carry the reason the run records (the values are
condition reasons, see ``kloop.api.conditions.Reason``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class GitError(StrEnum):
    """Why a checkout or a push did not happen."""

    REMOTE_UNAVAILABLE = "GitRemoteUnavailable"
    """The remote did not answer, or refused the credentials."""
    CHECKOUT_FAILED = "CheckoutFailed"
    """The remote answered, but the ref or commit to start from is not there."""
    PUSH_REJECTED = "PushRejected"
    """The branch moved on the remote: not a fast-forward (kloop never forces)."""
    PUSH_FAILED = "PushFailed"
    """Anything else that stopped the push (a broken repository, no time left)."""


class GitReport(BaseModel):
    """The clone's or the push's result (schema v1)."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}([0-9a-f]{24})?$")
    """Clone: the commit checked out. Push: the commit pushed."""
    error: GitError | None = None
    """Set when it failed."""
    message: str = Field(default="", max_length=1024)
    """What happened, in words (credentials masked)."""


def parse_git_report(message: str | None) -> GitReport | None:
    """The report of a termination message; None when it is missing or not a report."""
    if not message or not message.strip():
        return None
    try:
        return GitReport.model_validate_json(message)
    except ValidationError:
        return None
