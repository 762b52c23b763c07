"""Warm schedules to try, derived from a trace's weekly pattern.

The window advisor (``advisor.py``) replays each of them with every scaledown window, so
that it can recommend a schedule without being handed one. How they are found:

* Each request is bucketed by its weekday and hour in a time zone (UTC by default). A slot,
  say Tuesday 10:00, is *busy* at a threshold when the share of the trace's Tuesdays whose
  10:00 hour saw a request reaches it, on two days at least (one day is no pattern). Only
  the hours the trace's span covers count as seen.
* Adjacent busy hours merge into windows (09, 10, ..., 17 -> 09:00 for 9 h, across
  midnight too), and a lull shorter than ``MIN_GAP_HOURS`` between two of them is kept
  warm: an idle hour amid busy ones is more likely chance than a pattern, and closing for
  it saves little. Weekdays with the same window share one cron line
  (``0 9 * * mon-fri 9h UTC``), in ``VLLM_WARM_SCHEDULE``'s grammar (``schedule.py``).
* Per threshold (``DEFAULT_THRESHOLDS``), three variants: *tight* (the busy hours),
  *padded* (an hour more each side, for early and late arrivals), *weekdays* (tight,
  Monday to Friday only). Duplicates are dropped, the first kept.
* Left out, as chance rather than a weekly pattern: a schedule whose closed hours are not
  quiet (requests on more than ``MAX_CLOSED_SHARE`` of their days, all of them together:
  thin round-the-clock traffic, whose idle hours in the trace are luck that next month
  will not repeat, while the replay of this trace would reward them); one whose open hours
  hold less than ``MIN_COVERED_SHARE`` of the requests (sparse traffic, where two requests
  in the same hour of two Tuesdays are a coincidence, not a busy hour); one open more than
  ``MAX_OPEN_SHARE`` of the week (the few idle hours then are as likely luck, and always
  on is a row of its own; a threshold whose tight schedule is one gives no variants
  either); and one of more than ``MAX_WINDOWS`` cron lines (busy hours scattered over the
  week, as random bursts give).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .advisor import Trace

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MAX_CLOSED_SHARE",
    "MAX_OPEN_SHARE",
    "MAX_WINDOWS",
    "MIN_BUSY_DAYS",
    "MIN_COVERED_SHARE",
    "MIN_GAP_HOURS",
    "Candidate",
    "busy_hours",
    "derive_schedules",
]

DEFAULT_THRESHOLDS = (0.25, 0.5, 0.75)
MIN_BUSY_DAYS = 2
MIN_GAP_HOURS = 3
MAX_OPEN_SHARE = 0.9
MAX_WINDOWS = 8
MAX_CLOSED_SHARE = 0.1
MIN_COVERED_SHARE = 0.5
WEEK_HOURS = 7 * 24
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Slot = tuple[int, int]
"""(weekday, Monday 0, hour 0-23) in the zone."""


@dataclass(frozen=True)
class Candidate:
    schedule: str
    """``VLLM_WARM_SCHEDULE``'s grammar."""
    threshold: float
    """The share of days an hour saw requests on, at least, to be busy."""
    variant: str
    """``tight``, ``padded`` or ``weekdays``."""
    hours_per_week: int


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a time zone (e.g. Europe/Paris, UTC)") from None


@dataclass(frozen=True)
class _Hour:
    """One slot over the trace."""

    days: int
    """Days it saw requests on."""
    seen: int
    """Days the trace's span covers it."""
    requests: int


def _tally(trace: Trace, zone: str) -> dict[Slot, _Hour]:
    tz = _zone(zone)
    days: dict[Slot, set] = defaultdict(set)
    requests: dict[Slot, int] = defaultdict(int)
    for t in trace.times:
        local = datetime.fromtimestamp(t, tz)
        days[(local.weekday(), local.hour)].add(local.date())
        requests[(local.weekday(), local.hour)] += 1
    seen: dict[Slot, int] = defaultdict(int)
    day = datetime.fromtimestamp(trace.start, tz).date()
    last = datetime.fromtimestamp(trace.end, tz).date()
    while day <= last:
        for hour in range(24):
            opens = datetime(day.year, day.month, day.day, hour, tzinfo=tz).timestamp()
            if opens < trace.end and opens + 3600 > trace.start:
                seen[(day.weekday(), hour)] += 1
        day += timedelta(days=1)
    # A request in a slot means its hour was seen, whatever a DST change or the span's
    # last second says.
    return {
        slot: _Hour(len(days[slot]), max(seen[slot], len(days[slot])), requests[slot])
        for slot in seen.keys() | days.keys()
    }


def busy_hours(trace: Trace, zone: str = "UTC") -> dict[Slot, tuple[int, int]]:
    """Per slot the trace's span covers: (days it saw requests on, days the span covers that
    hour of that weekday)."""
    return {slot: (h.days, h.seen) for slot, h in _tally(trace, zone).items()}


def _runs(slots: set[int]) -> list[tuple[int, int]]:
    """The week's open stretches as (first hour of the week, Monday 00:00 = 0, length in
    hours), one that wraps from Sunday into Monday kept whole."""
    if len(slots) >= WEEK_HOURS:
        return [(0, WEEK_HOURS)]
    closed = next(h for h in range(WEEK_HOURS) if h not in slots)
    runs: list[tuple[int, int]] = []
    for step in range(1, WEEK_HOURS + 1):  # from just after a closed hour, round the week
        hour = (closed + step) % WEEK_HOURS
        if hour not in slots:
            continue
        if runs and (runs[-1][0] + runs[-1][1]) % WEEK_HOURS == hour:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((hour, 1))
    return sorted(runs)


def _bridged(slots: set[int], gap: int) -> set[int]:
    """``slots`` with each lull shorter than ``gap`` hours between two stretches filled."""
    runs = _runs(slots)
    out = set(slots)
    for n, (first, length) in enumerate(runs):
        end = first + length
        following = runs[(n + 1) % len(runs)][0]
        lull = (following - end) % WEEK_HOURS
        if 0 < lull < gap:
            out.update((end + h) % WEEK_HOURS for h in range(lull))
    return out


def _padded(slots: set[int]) -> set[int]:
    return {(s + d) % WEEK_HOURS for s in slots for d in (-1, 0, 1)}


def _weekdays(days: list[int]) -> str:
    """Cron's day-of-week field: ``*``, ``mon-fri``, ``sat,sun``, ``mon,wed-fri``."""
    if len(days) == 7:
        return "*"
    groups: list[list[int]] = []
    for day in days:
        if groups and day == groups[-1][-1] + 1:
            groups[-1].append(day)
        else:
            groups.append([day])
    names: list[str] = []
    for group in groups:  # two days read better as a list: sat,sun
        if len(group) > 2:
            names.append(f"{_DAYS[group[0]]}-{_DAYS[group[-1]]}")
        else:
            names += [_DAYS[d] for d in group]
    return ",".join(names)


def _lines(slots: set[int], zone: str) -> list[str]:
    """One cron line per (start hour, length), the weekdays sharing it grouped."""
    days_of: dict[tuple[int, int], list[int]] = defaultdict(list)
    for first, length in _runs(slots):
        days_of[(first % 24, length)].append(first // 24)
    ordered = sorted(days_of.items(), key=lambda item: (item[1][0], item[0]))
    return [f"0 {h} * * {_weekdays(days)} {n}h {zone}" for (h, n), days in ordered]


def _a_pattern(hours: dict[Slot, _Hour], open_: set[int]) -> bool:
    """Whether a schedule open in ``open_`` follows the traffic: the hours it leaves closed
    are quiet (requests on ``MAX_CLOSED_SHARE`` of their days at most, all of them together)
    and its open hours hold ``MIN_COVERED_SHARE`` of the requests at least."""
    inside = {slot: h for slot, h in hours.items() if slot[0] * 24 + slot[1] in open_}
    closed = [h for slot, h in hours.items() if slot not in inside]
    seen = sum(h.seen for h in closed)
    if seen and sum(h.days for h in closed) / seen > MAX_CLOSED_SHARE:
        return False
    total = sum(h.requests for h in hours.values())
    return sum(h.requests for h in inside.values()) >= MIN_COVERED_SHARE * total


def derive_schedules(
    trace: Trace,
    zone: str = "UTC",
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
    min_days: int = MIN_BUSY_DAYS,
) -> list[Candidate]:
    """Warm schedules to try for ``trace``, in ``zone`` (module docstring); none when no hour
    is busy at any threshold, or the busy hours are no weekly pattern."""
    if any(not 0 < t <= 1 for t in thresholds):
        raise ValueError(f"thresholds are shares of days, above 0 and at most 1: {thresholds}")
    hours = _tally(trace, zone)
    most = MAX_OPEN_SHARE * WEEK_HOURS
    found: dict[str, Candidate] = {}
    for threshold in sorted(thresholds):
        busy = {
            weekday * 24 + hour
            for (weekday, hour), h in hours.items()
            if h.days >= min_days and h.days / h.seen >= threshold
        }
        tight = _bridged(busy, MIN_GAP_HOURS)
        if not tight or len(tight) > most:
            continue
        variants = {
            "tight": tight,
            "padded": _bridged(_padded(tight), MIN_GAP_HOURS),
            "weekdays": {h for h in tight if h < 5 * 24},
        }
        for variant, slots in variants.items():
            lines = _lines(slots, zone) if 0 < len(slots) <= most else []
            if not 0 < len(lines) <= MAX_WINDOWS or not _a_pattern(hours, slots):
                continue
            text = "; ".join(lines)
            found.setdefault(text, Candidate(text, threshold, variant, len(slots)))
    return list(found.values())
