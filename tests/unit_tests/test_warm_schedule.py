"""Warm schedules: parsing, open windows in their own time zone, the next change, overlapping
windows, open time for the cost model, and min_containers ahead of a window."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from deploy.config import Settings
from deploy.warm_schedule import WarmSchedule

PARIS = ZoneInfo("Europe/Paris")
OFFICE = "0 9 * * mon-fri 9h Europe/Paris"


def at(*args: int, tz: dt.tzinfo = PARIS) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


@pytest.mark.parametrize(
    ("when", "open_"),
    [
        ((2026, 11, 25, 8, 59), False),  # Wednesday, before
        ((2026, 11, 25, 9, 0), True),  # the start itself
        ((2026, 11, 25, 17, 59), True),
        ((2026, 11, 25, 18, 0), False),  # the end is outside
        ((2026, 11, 28, 12, 0), False),  # Saturday
        ((2026, 7, 15, 9, 30), True),  # summer time: still 09:00 Paris
    ],
)
def test_windows_are_open_in_their_own_time_zone(when: tuple[int, ...], open_: bool) -> None:
    assert WarmSchedule.parse(OFFICE).is_open(at(*when)) is open_


def test_next_change_is_the_window_s_end_inside_and_the_next_start_outside() -> None:
    schedule = WarmSchedule.parse(OFFICE)
    assert schedule.next_change(at(2026, 11, 25, 12, 0)) == at(2026, 11, 25, 18, 0)
    assert schedule.next_change(at(2026, 11, 27, 19, 0)) == at(2026, 11, 30, 9, 0)  # Fri->Mon


def test_overlapping_and_back_to_back_windows_merge() -> None:
    schedule = WarmSchedule.parse("0 9 * * * 2h UTC; 0 10 * * * 3h UTC; 0 13 * * * 1h UTC")
    start = at(2026, 11, 25, 9, 30, tz=dt.timezone.utc)
    assert schedule.next_change(start) == at(2026, 11, 25, 14, 0, tz=dt.timezone.utc)


def test_open_seconds_count_a_week_of_office_hours() -> None:
    schedule = WarmSchedule.parse(OFFICE)
    monday = at(2026, 11, 23, 0, 0)
    assert schedule.open_seconds(monday, monday + 7 * 86400) == 5 * 9 * 3600


def test_min_containers_rise_a_boot_ahead_of_a_window_and_keep_the_base() -> None:
    schedule = WarmSchedule.parse(OFFICE)
    before = at(2026, 11, 25, 8, 55)
    assert schedule.min_containers(before) == 0
    assert schedule.min_containers(before, lead=600) == 1  # the window opens within 10 min
    assert schedule.min_containers(at(2026, 11, 28, 12, 0), base=1) == 1  # integrated: always


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0 9 * * mon-fri", "a window is"),
        ("0 9 * * xyz 9h", "not a cron expression"),
        ("0 9 * * mon-fri nine Europe/Paris", "not a window length"),
        ("0 9 * * mon-fri 9h Mars/Olympus", "not a time zone"),
        ("0 9 * * mon-fri 8d", "between 1 minute and 7 days"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_setting(text: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(warm_schedule=text)
    assert "VLLM_WARM_SCHEDULE" in str(info.value) and fragment in str(info.value)


def test_status_description_names_windows_state_and_next_change() -> None:
    described = WarmSchedule.parse(OFFICE).describe(at(2026, 11, 25, 12, 0))
    assert described == {
        "windows": ["0 9 * * mon-fri 9h Europe/Paris"],
        "open": True,
        "next_change": "2026-11-25T17:00:00+00:00",
    }
