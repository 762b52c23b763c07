"""Warm schedules derived from a trace's weekly pattern: busy hours by weekday and hour in a
time zone, merged into windows, weekdays with the same windows grouped, written in
``VLLM_WARM_SCHEDULE``'s grammar."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from deploy.core import warm_candidates
from deploy.core.advisor import DAY, MONTH_START, Trace
from deploy.core.schedule import WarmSchedule
from deploy.core.warm_candidates import busy_hours, derive_schedules

HOUR = 3600.0
T = MONTH_START  # Monday 2024-01-01 00:00 UTC


def _trace(times: list[float], days: int = 28) -> Trace:
    return Trace(tuple(sorted(times)), T, T + days * DAY, "made up")


def _weekly(
    hours_by_weekday: dict[int, Iterable[int]], days: int = 28, skip: frozenset[int] = frozenset()
) -> list:
    """Two requests in each listed hour of each listed weekday, except on the days in skip."""
    times = []
    for day in range(days):
        if day in skip:
            continue
        for hour in hours_by_weekday.get(day % 7, ()):
            times += [T + day * DAY + hour * HOUR + 60, T + day * DAY + hour * HOUR + 1800]
    return times


def test_weekday_hours_merge_into_one_window_and_weekdays_group() -> None:
    trace = _trace(_weekly({d: range(9, 18) for d in range(5)}))
    schedules = [c.schedule for c in derive_schedules(trace)]
    # tight; padded by an hour each side (weekdays only is the tight one again: left out)
    assert schedules == ["0 9 * * mon-fri 9h UTC", "0 8 * * mon-fri 11h UTC"]


def test_each_threshold_gives_tight_padded_and_weekdays_only_variants() -> None:
    # Weekdays 09:00-12:00 every week; Saturdays 10:00-11:00 on two of four; Wednesdays
    # also 14:00-15:00 on one of four (one day: never busy, whatever the threshold).
    times = _weekly(
        {**{d: range(9, 12) for d in range(5)}, 5: range(10, 11)}, skip=frozenset({19, 26})
    )
    times += [T + 16 * DAY + 14 * HOUR + 60, T + 16 * DAY + 14 * HOUR + 120]
    found = derive_schedules(_trace(times), thresholds=(0.5, 0.75))
    assert [(c.schedule, c.threshold, c.variant) for c in found] == [
        ("0 9 * * mon-fri 3h UTC; 0 10 * * sat 1h UTC", 0.5, "tight"),
        ("0 8 * * mon-fri 5h UTC; 0 9 * * sat 3h UTC", 0.5, "padded"),
        ("0 9 * * mon-fri 3h UTC", 0.5, "weekdays"),
        # 0.75: Saturday (2 of 4) is no longer busy; tight (and weekdays only) seen at 0.5
        ("0 8 * * mon-fri 5h UTC", 0.75, "padded"),
    ]
    assert [c.hours_per_week for c in found] == [16, 28, 15, 25]


def test_candidates_parse_and_open_exactly_the_busy_hours() -> None:
    trace = _trace(_weekly({0: range(7, 10), 2: range(7, 10), 3: range(20, 24), 4: range(0, 2)}))
    busy = busy_hours(trace, "UTC")
    (tight, *_) = derive_schedules(trace)
    # Thursday 20:00 to Friday 02:00 is one window, across midnight.
    assert tight.schedule == "0 7 * * mon,wed 3h UTC; 0 20 * * thu 6h UTC"
    schedule = WarmSchedule.parse(tight.schedule)
    week = [T + 7 * DAY + h * HOUR + 1 for h in range(7 * 24)]  # the second week, hour by hour
    opened = {
        (int((t - T) // DAY) % 7, int((t - T) % DAY // HOUR)) for t in week if schedule.is_open(t)
    }
    assert opened == {slot for slot, (days, seen) in busy.items() if days / seen >= 0.25}
    assert len(opened) == tight.hours_per_week == 12


def test_hours_are_a_time_zone_s_own_across_daylight_saving() -> None:
    # Weekdays 09:00-18:00 Paris time for six weeks from Monday 11 March 2024: three in
    # winter time (08:00-17:00 UTC), three in summer time (07:00-16:00 UTC).
    paris = ZoneInfo("Europe/Paris")
    times = []
    for day in range(42):
        date = dt.date(2024, 3, 11) + dt.timedelta(days=day)
        if date.weekday() < 5:
            opens = dt.datetime(date.year, date.month, date.day, 9, tzinfo=paris).timestamp()
            times += [opens + 60 + k * 900 for k in range(36)]
    trace = Trace.of(times)
    paris_first = derive_schedules(trace, "Europe/Paris")[0]
    assert paris_first.schedule == "0 9 * * mon-fri 9h Europe/Paris"
    # Read in UTC, 07:00 and 16:00 are busy on half the days; 08:00-16:00 on all of them.
    utc = {c.threshold: c.schedule for c in derive_schedules(trace, "UTC") if c.variant == "tight"}
    assert utc == {0.25: "0 7 * * mon-fri 10h UTC", 0.75: "0 8 * * mon-fri 8h UTC"}


def test_a_short_lull_is_kept_warm_a_longer_one_is_not() -> None:
    lunch = _trace(_weekly({d: [9, 10, 11, 13, 14, 15, 16, 17] for d in range(5)}))
    assert derive_schedules(lunch)[0].schedule == "0 9 * * mon-fri 9h UTC"
    split = _trace(_weekly({d: [9, 10, 11, 15, 16, 17] for d in range(5)}))
    assert derive_schedules(split)[0].schedule == (
        "0 9 * * mon-fri 3h UTC; 0 15 * * mon-fri 3h UTC"
    )


def test_a_night_off_is_a_schedule_an_hour_off_is_not() -> None:
    nights = _trace(_weekly({d: range(6, 24) for d in range(7)}))
    assert [c.schedule for c in derive_schedules(nights)][:1] == ["0 6 * * * 18h UTC"]
    # Idle only Wednesday 03:00-07:00: open 164 of 168 hours, too close to always on.
    almost = _weekly({d: range(24) for d in range(7)})
    almost = [t for t in almost if int((t - T) % (7 * DAY) // HOUR) not in range(51, 55)]
    assert derive_schedules(_trace(almost)) == []


def test_busy_hours_scattered_over_the_week_are_no_schedule() -> None:
    # Three lone busy hours a day, each day at other hours: 21 windows, too many lines.
    times = _weekly({d: [d, d + 8, d + 16] for d in range(7)})
    assert derive_schedules(_trace(times)) == []


def test_thin_round_the_clock_traffic_is_no_schedule(monkeypatch) -> None:
    # Poisson at 0.5 requests/h all week: about half the hours see requests on two days
    # of four, by chance; the hours left closed saw requests on some 20% of days.
    rng = random.Random("thin")
    times, at = [], T
    while (at := at + rng.expovariate(0.5 / HOUR)) < T + 28 * DAY:
        times.append(at)
    trace = _trace(times)
    assert derive_schedules(trace) == []
    monkeypatch.setattr(warm_candidates, "MAX_CLOSED_SHARE", 1.0)
    assert derive_schedules(trace)  # what the rule leaves out: lulls that were luck


def test_a_few_requests_after_hours_leave_office_hours_a_schedule() -> None:
    times = _weekly({d: range(9, 18) for d in range(5)})
    times += [T + day * DAY + 20 * HOUR for day in (1, 9, 17, 25)]  # late, once a weekday
    assert derive_schedules(_trace(times))[0].schedule == "0 9 * * mon-fri 9h UTC"


def test_a_coincidence_in_sparse_traffic_is_no_schedule(monkeypatch) -> None:
    # Two requests on Tuesdays at 10:00 (of four) and 20 more at other hours: that hour
    # holds 2 of 22 requests.
    times = [T + 1 * DAY + 10 * HOUR + 60, T + 8 * DAY + 10 * HOUR + 60]
    times += [T + day * DAY + (day * 5 % 24) * HOUR for day in range(2, 22)]
    trace = _trace(times)
    assert busy_hours(trace, "UTC")[(1, 10)] == (2, 4)
    assert derive_schedules(trace) == []
    monkeypatch.setattr(warm_candidates, "MIN_COVERED_SHARE", 0.0)
    assert derive_schedules(trace)[0].schedule == "0 10 * * tue 1h UTC"


def test_sparse_traffic_has_no_busy_hours() -> None:
    # A request a day at a different hour each day: no hour busy on two days.
    trace = _trace([T + day * DAY + (day * 5 % 24) * HOUR for day in range(28)])
    assert derive_schedules(trace) == []
    assert all(days <= 1 for days, _ in busy_hours(trace, "UTC").values())


def test_traffic_at_every_hour_gives_no_schedule_always_on_is_one() -> None:
    trace = _trace(_weekly({d: range(24) for d in range(7)}))
    assert derive_schedules(trace) == []


def test_hours_seen_count_only_the_trace_s_span() -> None:
    # Two weeks from Monday 12:00: that Monday's 09:00 was never seen, its 12:00 was.
    start = T + 12 * HOUR
    trace = Trace((start + 60, start + 7 * DAY + 60), start, start + 14 * DAY)
    busy = busy_hours(trace, "UTC")
    assert busy[(0, 12)] == (2, 2)
    assert busy[(0, 9)] == (0, 2)  # seen in the second and third weeks, idle
    assert len(busy) == 7 * 24
    assert derive_schedules(trace)[0].schedule == "0 12 * * mon 1h UTC"


@pytest.mark.parametrize("threshold", [0.0, 1.5])
def test_thresholds_are_shares(threshold: float) -> None:
    with pytest.raises(ValueError, match="share"):
        derive_schedules(_trace([T, T + DAY]), thresholds=(threshold,))


def test_a_zone_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="not a time zone"):
        derive_schedules(_trace([T, T + DAY]), "Mars/Olympus")


@pytest.mark.parametrize(
    "text",
    [
        "0 9 * * mon-fri 9h Europe/Paris",  # across the change to summer time
        "0 9 * * mon-fri 9h UTC; 0 12 * * wed 8h UTC",  # overlapping
        "0 9 * * mon 3h UTC; 0 12 * * mon 2h UTC",  # back to back
        "0 22 * * fri 5h UTC; 0 0 * * sun 48h UTC",  # across midnight, into next week
    ],
)
def test_open_spans_add_up_to_open_seconds(text: str) -> None:
    # The advisor reads a schedule's open time window by window (open_spans); the cost
    # model and /status by its changes (open_seconds, next_change): the same hours.
    schedule = WarmSchedule.parse(text)
    start = dt.datetime(2024, 3, 20, 10, 30, tzinfo=dt.timezone.utc).timestamp()
    end = start + 21 * DAY
    spans = schedule.open_spans(start, end)
    assert sum(b - a for a, b in spans) == schedule.open_seconds(start, end)
    assert all(b1 < a2 for (_, b1), (a2, _) in pairwise(spans))
    assert all(schedule.is_open(a) and not schedule.is_open(b) for a, b in spans if b < end)
