"""When a schedule is due (kloop.core.schedule): CronJob's missed starts, cron's DST rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kloop.api.conditions import Reason
from kloop.core.schedule import TOO_MANY_MISSED, ScheduleError, compute_due, parse

pytestmark = pytest.mark.unit

BERLIN = "Europe/Berlin"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type,misc]


def test_nothing_is_due_before_the_first_scheduled_time() -> None:
    due = compute_due(
        parse("0 * * * *", None), utc(2026, 5, 1, 10, 0, 30), utc(2026, 5, 1, 10, 59), None
    )
    assert due.scheduled is None
    assert due.missed == 0
    assert due.next_time == utc(2026, 5, 1, 11)


def test_a_time_just_passed_is_due_and_the_next_one_follows() -> None:
    due = compute_due(
        parse("*/5 * * * *", None), utc(2026, 5, 1, 10, 0), utc(2026, 5, 1, 10, 5, 2), None
    )
    assert due.scheduled == utc(2026, 5, 1, 10, 5)
    assert due.missed == 1
    assert not due.too_late
    assert due.next_time == utc(2026, 5, 1, 10, 10)


def test_the_last_scheduled_time_itself_is_not_due_again() -> None:
    due = compute_due(
        parse("*/5 * * * *", None), utc(2026, 5, 1, 10, 5), utc(2026, 5, 1, 10, 9), None
    )
    assert due.scheduled is None


def test_after_an_outage_only_the_most_recent_missed_time_is_due() -> None:
    since, now = utc(2026, 5, 1, 10, 0), utc(2026, 5, 1, 10, 37, 10)
    due = compute_due(parse("*/10 * * * *", None), since, now, None)
    assert due.scheduled == utc(2026, 5, 1, 10, 30)
    assert due.missed == 3  # 10:10, 10:20, 10:30
    assert not due.too_many_missed


def test_more_than_a_hundred_missed_times_is_too_many_and_still_finds_the_latest() -> None:
    since = utc(2026, 5, 1, 0, 0)
    now = since + timedelta(days=30, seconds=30)  # 43,200 minutes of a per-minute schedule
    due = compute_due(parse("* * * * *", None), since, now, None)
    assert due.too_many_missed
    assert due.missed == TOO_MANY_MISSED + 1  # counting stops there
    assert due.scheduled == utc(2026, 5, 31, 0, 0)


def test_a_starting_deadline_counts_only_the_times_within_it() -> None:
    since = utc(2026, 5, 1, 0, 0)
    now = utc(2026, 5, 2, 0, 0, 30)
    due = compute_due(parse("* * * * *", None), since, now, starting_deadline_seconds=300)
    assert not due.too_many_missed
    assert due.missed == 5
    assert due.scheduled == utc(2026, 5, 2, 0, 0)
    assert not due.too_late


def test_a_missed_time_older_than_the_starting_deadline_is_too_late() -> None:
    since = utc(2026, 5, 1, 9, 0)
    now = utc(2026, 5, 1, 10, 3)  # 10:00 was missed by 180 s
    due = compute_due(parse("0 * * * *", None), since, now, starting_deadline_seconds=120)
    assert due.scheduled == utc(2026, 5, 1, 10)
    assert due.too_late
    within = compute_due(parse("0 * * * *", None), since, now, starting_deadline_seconds=200)
    assert not within.too_late


def test_the_schedule_is_read_in_its_time_zone() -> None:
    # 09:00 in Berlin in May is 07:00 UTC (CEST, +02:00)
    due = compute_due(
        parse("0 9 * * *", BERLIN), utc(2026, 5, 1, 8), utc(2026, 5, 2, 7, 0, 5), None
    )
    assert due.scheduled == utc(2026, 5, 2, 7)
    assert due.next_time == utc(2026, 5, 3, 7)


def test_a_time_in_the_spring_forward_gap_fires_at_the_first_minute_after_it() -> None:
    # Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day
    schedule = parse("30 2 * * *", BERLIN)
    due = compute_due(schedule, utc(2026, 3, 28, 12), utc(2026, 3, 29, 0, 59), None)
    assert due.scheduled is None
    assert due.next_time == utc(2026, 3, 29, 1, 0)  # 03:00 CEST, once
    fired = compute_due(schedule, utc(2026, 3, 28, 12), utc(2026, 3, 29, 1, 0, 5), None)
    assert fired.scheduled == utc(2026, 3, 29, 1, 0)
    assert fired.missed == 1
    assert fired.next_time == utc(2026, 3, 30, 0, 30)  # back to 02:30 CEST


def test_a_fixed_time_in_the_repeated_fall_back_hour_fires_once() -> None:
    # Berlin 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice
    schedule = parse("30 2 * * *", BERLIN)
    first = compute_due(schedule, utc(2026, 10, 24, 12), utc(2026, 10, 25, 0, 30, 5), None)
    assert first.scheduled == utc(2026, 10, 25, 0, 30)  # 02:30 CEST
    # after it ran, the second 02:30 (CET, 01:30 UTC) is not a scheduled time
    after = compute_due(schedule, first.scheduled, utc(2026, 10, 25, 1, 45), None)
    assert after.scheduled is None
    assert after.next_time == utc(2026, 10, 26, 1, 30)  # 02:30 CET, the next day


def test_a_wildcard_hour_fires_in_both_repeated_hours() -> None:
    schedule = parse("30 * * * *", BERLIN)
    due = compute_due(schedule, utc(2026, 10, 24, 23, 45), utc(2026, 10, 25, 1, 40), None)
    assert due.missed == 2  # 02:30 CEST and 02:30 CET
    assert due.scheduled == utc(2026, 10, 25, 1, 30)


def test_the_most_recent_time_is_found_inside_the_repeated_hour_after_a_long_outage() -> None:
    # now is in the second (CET) 02:xx hour: the day's 02:30 CEST (00:30 UTC) has passed
    schedule = parse("30 2 * * *", BERLIN)
    due = compute_due(schedule, utc(2026, 6, 1), utc(2026, 10, 25, 1, 10), None)
    assert due.scheduled == utc(2026, 10, 25, 0, 30)


def test_a_start_inside_the_repeated_hour_never_yields_a_time_before_it() -> None:
    # created at 02:40 CET (the second pass): 02:45 CEST was before, not after it
    schedule = parse("45 2 * * *", BERLIN)
    due = compute_due(schedule, utc(2026, 10, 25, 1, 40), utc(2026, 10, 25, 1, 50), None)
    assert due.scheduled is None
    assert due.next_time == utc(2026, 10, 26, 1, 45)


@pytest.mark.parametrize(
    ("macro", "now", "expected"),
    [
        ("@hourly", utc(2026, 5, 1, 10, 0, 1), utc(2026, 5, 1, 10)),
        ("@daily", utc(2026, 5, 1, 0, 0, 1), utc(2026, 5, 1)),
        ("@midnight", utc(2026, 5, 1, 0, 0, 1), utc(2026, 5, 1)),
        ("@weekly", utc(2026, 5, 3, 0, 0, 1), utc(2026, 5, 3)),  # a Sunday
        ("@monthly", utc(2026, 5, 1, 0, 0, 1), utc(2026, 5, 1)),
        ("@yearly", utc(2026, 1, 1, 0, 0, 1), utc(2026, 1, 1)),
    ],
)
def test_macros_are_their_five_field_forms(macro: str, now: datetime, expected: datetime) -> None:
    due = compute_due(parse(macro, None), now - timedelta(days=1), now, None)
    assert due.scheduled == expected


def test_an_unknown_time_zone_is_an_invalid_time_zone() -> None:
    with pytest.raises(ScheduleError) as err:
        parse("* * * * *", "Mars/Olympus_Mons")
    assert err.value.reason is Reason.INVALID_TIME_ZONE
    assert "Mars/Olympus_Mons" in err.value.message


def test_a_schedule_that_can_never_fire_is_an_invalid_schedule() -> None:
    with pytest.raises(ScheduleError) as err:
        parse("0 0 31 2 *", None)  # accepted by the CRD's pattern, but February has no 31st
    assert err.value.reason is Reason.INVALID_SCHEDULE
