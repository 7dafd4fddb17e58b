"""When a Loop's schedule is due: CronJob's semantics, computed from times given as inputs.

Pure: the caller passes the last scheduled time (or the Loop's creation time) and now. After an
operator outage only the most recent missed time is started, as CronJob does; how many were
missed is counted up to ``TOO_MANY_MISSED`` + 1 (beyond that a Warning Event says so).

Cron is evaluated by ``cronsim`` in the schedule's zone, with Debian cron's daylight-saving
rules: a time that falls into a spring-forward gap fires at the first minute after the gap; in
the repeated fall-back hour a schedule with a fixed minute and hour fires once (the first
occurrence), one with a wildcard minute or hour fires in both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from kloop.api.conditions import Reason

TOO_MANY_MISSED = 100
"""More missed times than this (since the last one or within the starting deadline) is a Warning."""

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
"""cronsim knows no macros: their five-field forms (as in crontab(5))."""

_SECOND = timedelta(seconds=1)


class ScheduleError(ValueError):
    """The schedule cannot be evaluated; ``reason`` is the Loop's Ready reason."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Schedule:
    """A parsed cron expression in its zone."""

    expression: str
    zone: ZoneInfo

    def after(self, instant: datetime) -> datetime | None:
        """The first scheduled time strictly after ``instant`` (UTC), or None (never again)."""
        return next(self.times_after(instant), None)

    def times_after(self, instant: datetime) -> Iterator[datetime]:
        """Every scheduled time strictly after ``instant``, in UTC, ascending."""
        return _Times(self, instant)


class _Times:
    """Scheduled times strictly after a start, in UTC, ascending.

    cronsim evaluates fixed-time schedules on naive local time, so a start inside the repeated
    fall-back hour may yield a time just before it: such times are dropped here.
    """

    def __init__(self, schedule: Schedule, start: datetime) -> None:
        self._start = start.astimezone(UTC)
        self._sim = CronSim(schedule.expression, self._start.astimezone(schedule.zone))

    def __iter__(self) -> _Times:
        return self

    def __next__(self) -> datetime:
        while True:
            found = next(self._sim).astimezone(UTC)
            if found > self._start:
                self._start = found
                return found


def parse(expression: str, time_zone: str | None) -> Schedule:
    """A Schedule, or ScheduleError (InvalidTimeZone, InvalidSchedule) saying what is wrong."""
    name = time_zone or "UTC"
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            Reason.INVALID_TIME_ZONE, f"timeZone {name!r} is not a known IANA time zone"
        ) from None
    five = MACROS.get(expression.strip().lower(), expression.strip())
    try:
        CronSim(five, datetime(2000, 1, 1, tzinfo=zone))
    except CronSimError as err:
        raise ScheduleError(
            Reason.INVALID_SCHEDULE, f"schedule {expression!r} cannot be evaluated: {err}"
        ) from None
    return Schedule(five, zone)


@dataclass(frozen=True)
class Due:
    """What the schedule asks for now."""

    scheduled: datetime | None
    """The most recent scheduled time since the last one that has not been acted on (UTC)."""
    missed: int
    """How many scheduled times were due (counted up to ``TOO_MANY_MISSED`` + 1)."""
    too_late: bool
    """``scheduled`` is older than startingDeadlineSeconds: skip it (never start it late)."""
    next_time: datetime | None
    """The first scheduled time after now (UTC); None when the schedule never fires again."""

    @property
    def too_many_missed(self) -> bool:
        """More than ``TOO_MANY_MISSED`` times were missed (a Warning Event, as CronJob's)."""
        return self.missed > TOO_MANY_MISSED


def compute_due(
    schedule: Schedule, since: datetime, now: datetime, starting_deadline_seconds: int | None
) -> Due:
    """The most recent time in (since, now] to start, how many were missed, and the next time.

    ``since`` is the last scheduled time acted on, or the Loop's creation. With a starting
    deadline, times are counted only within it (CronJob counts from ``now - deadline`` then), and
    a most recent time older than the deadline is too late.
    """
    now = now.astimezone(UTC)
    deadline = (
        now - timedelta(seconds=starting_deadline_seconds)
        if starting_deadline_seconds is not None
        else None
    )
    count_from = max(since, deadline) if deadline is not None else since
    missed = 0
    for found in schedule.times_after(count_from):
        if found > now or missed > TOO_MANY_MISSED:
            break
        missed += 1
    latest = latest_time(schedule, since, now)
    return Due(
        scheduled=latest,
        missed=missed,
        too_late=latest is not None and deadline is not None and latest < deadline,
        next_time=schedule.after(now),
    )


def latest_time(schedule: Schedule, since: datetime, now: datetime) -> datetime | None:
    """The newest scheduled time in (since, now], without walking every time since ``since``.

    cronsim's reverse iteration finds a time at or before now; a few forward steps from there
    correct it where reverse iteration on naive local time undershoots (the fall-back hour).
    """
    start = since
    reverse = CronSim(schedule.expression, (now + _SECOND).astimezone(schedule.zone), reverse=True)
    try:
        candidate = next(reverse).astimezone(UTC)
    except StopIteration:
        candidate = None
    if candidate is not None and candidate > since:
        start = candidate - _SECOND
    latest = None
    for found in schedule.times_after(start):
        if found > now:
            break
        latest = found
    return latest
