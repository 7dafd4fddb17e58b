"""Starting a run of a Loop on someone's behalf (schedule, trigger): names and concurrency.

Pure: the adapter lists the Loop's active runs and applies the plan. Names are deterministic
from what caused the run (a scheduled time, a tag), so a restarted operator or a re-delivered
webhook finds the run it already created instead of creating a second one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kloop.api.loop import ConcurrencyPolicy

# run names are label values (kloop.dev/run), so they fit 63 characters
MAX_RUN_NAME = 63
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class RunRequest:
    """A run someone (a schedule, a trigger) wants started."""

    name: str
    """Deterministic LoopRun name."""
    cause: str
    """Why, for Events and logs, e.g. ``scheduled for 2026-11-26T10:00:00Z``."""
    context: Mapping[str, Any] = field(default_factory=dict)
    """Handed to the agents as KLOOP_CONTEXT."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """Recorded on the LoopRun (e.g. the scheduled time, the trigger)."""


@dataclass(frozen=True)
class StartPlan:
    """What to do about a RunRequest, given the Loop's active runs."""

    create: bool
    abort: tuple[str, ...] = ()
    why: str = ""


def plan_start(policy: ConcurrencyPolicy, active: Sequence[str], request: RunRequest) -> StartPlan:
    """CronJob's concurrencyPolicy: Allow runs alongside, Forbid skips, Replace aborts the others.

    The request's own run counts as already started (a repeat of the same cause changes nothing).
    """
    others = tuple(sorted(a for a in active if a != request.name))
    if request.name in active:
        return StartPlan(create=False, why=f"{request.name} is already running")
    if not others or policy is ConcurrencyPolicy.ALLOW:
        return StartPlan(create=True, why=request.cause)
    if policy is ConcurrencyPolicy.FORBID:
        return StartPlan(
            create=False,
            why=f"skipped ({request.cause}): {', '.join(others)} still active (Forbid)",
        )
    return StartPlan(
        create=True, abort=others, why=f"{request.cause}; replacing {', '.join(others)}"
    )


def run_name(loop: str, suffix: str) -> str:
    """``<loop>-<suffix>`` made a DNS label of at most 63 characters, still unique per suffix.

    When it does not fit, the loop part is shortened and a hash of the full suffix keeps names
    of different causes apart.
    """
    clean = _NOT_DNS.sub("-", suffix.lower()).strip("-") or "run"
    name = f"{loop}-{clean}"
    if len(name) <= MAX_RUN_NAME and clean == suffix:
        return name
    digest = hashlib.sha256(suffix.encode()).hexdigest()[:8]
    room = MAX_RUN_NAME - len(digest) - 2  # two dashes
    head = f"{loop}-{clean}"[:room].rstrip("-")
    return f"{head}-{digest}"


def scheduled_run_name(loop: str, scheduled: datetime) -> str:
    """CronJob's naming: minutes since the epoch of the scheduled time (UTC)."""
    return run_name(loop, str(int(scheduled.timestamp()) // 60))


def tag_run_name(loop: str, tag: str) -> str:
    """A run per tag: ``<loop>-<tag>`` (hashed when the tag is not already a clean name).

    An all-digit tag is hashed too, so it can never take the name of a scheduled run.
    """
    return run_name(loop, f"tag:{tag}" if tag.isdigit() else tag)
