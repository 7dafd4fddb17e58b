"""What a release trigger starts and what it records: the run request and status.triggers.

Pure; shared by the webhook receiver and the poller. Both name a tag's run ``<loop>-<tag>``
(``tag_run_name``), so one tag starts at most one run per Loop whichever trigger saw it first,
and a restarted operator or a re-delivered webhook finds that run instead of making another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kloop.core.launch import RunRequest, tag_run_name
from kloop.core.webhooks import TagPush

ANNOTATION_TRIGGER = "kloop.dev/trigger"
ANNOTATION_TAG = "kloop.dev/tag"
Json = dict[str, Any]


def run_request(loop: str, trigger: str, push: TagPush, via: str) -> RunRequest:
    """The run a tag push asks for; its context is what the agents read as KLOOP_CONTEXT.

    ``via`` is ``webhook`` or ``git`` (polling), for the cause in Events.
    """
    return RunRequest(
        name=tag_run_name(loop, push.tag),
        cause=f"tag {push.tag} of {push.repository} ({via} trigger {trigger})",
        context={
            "trigger": trigger,
            "repository": push.repository,
            "tag": push.tag,
            "commit": push.commit,
            "pushedBy": push.pushed_by,
        },
        annotations={ANNOTATION_TRIGGER: trigger, ANNOTATION_TAG: push.tag[:253]},
    )


@dataclass(frozen=True)
class TriggerChange:
    """Fields of one status.triggers entry to set (None leaves a field as it is)."""

    webhook_path: str | None = None
    last_tag: str | None = None
    last_polled: datetime | None = None
    recent_tags: Sequence[str] | None = None
    message: str | None = None
    clear_message: bool = False
    source: str | None = None


def poll_source(url: str, pattern: str | None) -> str:
    """A fingerprint of what a polling baseline was taken for: the repository and the pattern.

    Recorded as status.triggers[].source: a trigger pointed at another repository or pattern
    takes a new baseline instead of comparing the new tags with a lastTag from elsewhere (which
    would start a run for every tag that happens to sort after it).
    """
    return hashlib.sha256(f"{url}\n{pattern or ''}".encode()).hexdigest()[:16]


def baselined(current: Mapping[str, Any], source: str) -> bool:
    """Whether a poll of ``source`` already took its baseline (``lastPolled`` marks it)."""
    return bool(current.get("lastPolled")) and current.get("source") == source


def poll_failed(
    current: Mapping[str, Any], message: str, at: datetime, source: str
) -> TriggerChange:
    """What a poll that could not list or match the tags records: why, and when if baselined.

    ``lastPolled`` also marks the baseline as taken (``tags.plan_poll``'s ``first_poll``), so a
    failed first poll leaves it unset: else the first poll that works would find no baseline
    and start a run for every tag the repository already has.
    """
    return TriggerChange(last_polled=at if baselined(current, source) else None, message=message)


def entry(statuses: Iterable[Mapping[str, Any]] | None, name: str) -> Json:
    """The status.triggers entry of one trigger (empty when it has none yet)."""
    return next((dict(s) for s in statuses or [] if s.get("name") == name), {})


def updated(
    statuses: Iterable[Mapping[str, Any]] | None,
    names: Sequence[str],
    name: str,
    change: TriggerChange,
) -> list[Json]:
    """status.triggers with ``change`` applied to ``name``, in spec order, only for ``names``.

    Entries of triggers no longer in the spec are dropped.
    """
    current = {s.get("name"): dict(s) for s in statuses or []}
    mine = current.get(name) or {"name": name}
    if change.webhook_path is not None:
        mine["webhookPath"] = change.webhook_path
    if change.last_tag is not None:
        mine["lastTag"] = change.last_tag
    if change.last_polled is not None:
        mine["lastPolled"] = change.last_polled.strftime("%Y-%m-%dT%H:%M:%SZ")
    if change.recent_tags is not None:
        mine["recentTags"] = list(change.recent_tags)
    if change.source is not None:
        mine["source"] = change.source
    if change.message is not None:
        mine["message"] = change.message[:1024]
    elif change.clear_message:
        mine.pop("message", None)
    current[name] = mine
    return [current.get(n) or {"name": n} for n in names]


MIN_INTERVAL_SECONDS = 10
_UNITS = {"s": 1, "m": 60, "h": 3600}


def interval_seconds(text: str) -> int:
    """A polling interval (``30s``, ``5m``, ``1h``) in seconds, at least 10."""
    return max(MIN_INTERVAL_SECONDS, int(text[:-1]) * _UNITS[text[-1]])


def next_poll_delay(interval: int, last_polled: str | None, now: datetime) -> float:
    """Seconds until a trigger's next poll: at once when it never polled or is overdue.

    A restarted operator picks up the rhythm from status.triggers[].lastPolled instead of
    listing every remote again at once.
    """
    if not last_polled:
        return 0.0
    try:
        then = datetime.strptime(last_polled, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=now.tzinfo)
    except ValueError:
        return 0.0
    return max(0.0, min(float(interval), interval - (now - then).total_seconds()))
