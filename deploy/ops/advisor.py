"""The window advisor: which ``scaledown_window`` (or warm schedule) is cheapest for a traffic
trace, and how often its users wait for a boot.

It replays request arrival times against a scale-to-zero GPU, one setting at a time. The
model, kept simple so that a hand calculation gives the same figures:

* The GPU is off, booting or on. A request that finds it off starts a boot and waits the
  boot, ``B`` seconds (a cold start). A request arriving during a boot waits the rest of it.
  A request arriving while it is on waits nothing.
* A request is served when it arrives (or when the boot it waited for ends) and takes
  ``service_seconds`` (default 0: service time is ignored; concurrent requests never queue).
* The GPU turns off ``W`` seconds (``scaledown_window``) after the last request's service
  ended; a request arriving exactly then finds it off.
* Inside a warm-schedule window the GPU is on: already warm at the window's start (no wait
  for anyone inside it) and never turned off inside it. At the window's end the countdown W
  runs from the later of the window's end and the last request's service end. (On Modal the
  scheduler raises ``min_containers`` minutes ahead of a window and lowers it minutes after:
  not modelled, see docs/cold-starts.md.)
* Billing: the GPU's seconds booting or on, the last idle tail included, at the GPU's price
  times the GPU count; the wrapper is always on. Figures are scaled from the trace's span to
  a month (``CostInputs.days_per_month``, 30 days): GPU seconds outside the warm windows and
  cold starts are scaled by month / span; the windows themselves are priced over a whole
  month from a Monday by ``cost.warm_schedule_cost``, so that a short trace does not stand
  for a whole month of windows.
* "always on": the GPU on for the whole span, nobody waits.

Waits reported per setting: the share of requests that waited at all, the mean wait over all
requests and over those that waited, and the 95th percentile (nearest rank) of all waits.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..core.schedule import WarmSchedule
from .cost import MONTH_START, PRESETS, CostInputs, inputs_from_preset, warm_schedule_cost

__all__ = [
    "DEFAULT_WINDOWS",
    "INFERENCE_PATHS",
    "PROFILES",
    "Recommendation",
    "Row",
    "Trace",
    "load_traffic",
    "office_hours_schedule",
    "profile",
    "recommend",
    "simulate",
    "simulate_always_on",
    "sweep",
]

DEFAULT_WINDOWS = (30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
DEFAULT_PRESET = "modal-a100-80gb"  # the `cost` command's default
SEED_WINDOW = float(PRESETS["seed"]["scaledown_window"])
DEFAULT_MAX_WAIT_SHARE = 0.05
DAY = 86400.0

# The wrapper's inference routes (deploy/wrapper/routes/openai.py, routes_seed.py), written
# out: importing the routes would pull in FastAPI for a file reader.
INFERENCE_PATHS = ("/v1/chat/completions", "/v1/chat/completions/batch", "/chat")

PROFILES = ("office-hours", "bursty", "uniform")


@dataclass(frozen=True)
class Trace:
    """Request arrivals (epoch seconds, sorted) over the span ``start``..``end``."""

    times: tuple[float, ...]
    start: float
    end: float
    name: str = "trace"

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"{self.name}: a trace needs a span: two distinct timestamps at least")

    @classmethod
    def of(cls, times: Iterable[float], name: str = "trace") -> Trace:
        """A trace spanning its first to its last request."""
        ordered = tuple(sorted(float(t) for t in times))
        if not ordered:
            raise ValueError(f"{name}: no requests")
        return cls(ordered, ordered[0], ordered[-1], name)

    @property
    def span(self) -> float:
        return self.end - self.start

    @property
    def days(self) -> float:
        return self.span / DAY


@dataclass(frozen=True)
class Row:
    """One setting's figures for a trace (money in USD a month)."""

    label: str
    window: float | None
    """``scaledown_window``; None: always on."""
    schedule: str | None
    requests: int
    cold_starts: int
    cold_starts_per_day: float
    waited: int
    wait_share: float
    mean_wait: float
    """Over all requests, seconds."""
    mean_wait_waiting: float
    """Over the requests that waited (0 when none did)."""
    p95_wait: float
    gpu_seconds: float
    """GPU seconds booting or on during the trace itself."""
    gpu_hours_month: float
    gpu_monthly: float
    wrapper_monthly: float
    monthly: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Recommendation:
    row: Row
    fits: bool
    """False: no setting met the budget; ``row`` is then the one with the least waiting."""
    reason: str


# -- the simulation ------------------------------------------------------------------------


def _open_intervals(
    schedule: WarmSchedule | None, start: float, end: float
) -> list[tuple[float, float]]:
    """The schedule's open stretches (merged) that fall within ``start``..``end``, clipped."""
    out: list[tuple[float, float]] = []
    at = start
    while schedule and at < end:
        change = schedule.next_change(at)
        if change is None:
            break
        if schedule.is_open(at):
            out.append((at, min(change, end)))
        at = change if change > at else at + 60  # as WarmSchedule.open_seconds
    return out


def _events(times: Sequence[float], windows: list[tuple[float, float]]) -> list[tuple]:
    # A window opening at the very second a request arrives opens first: the request is warm.
    merged = [(a, 0, b) for a, b in windows] + [(float(t), 1, float(t)) for t in times]
    return sorted(merged)


def _replay(
    trace: Trace, window: float, boot: float, service: float, windows: list[tuple[float, float]]
) -> tuple[list[float], int, float]:
    """(each request's wait, cold starts, GPU seconds booting or on) for one setting."""
    waits: list[float] = []
    cold = 0
    billed = 0.0
    # The current wake: on since, warm from (the boot's end), turns off at. Off to begin with.
    on_since = warm_from = off_at = -math.inf
    for at, kind, closes in _events(trace.times, windows):
        if at >= off_at:  # the GPU is off: bill the wake that ended, start another
            billed += off_at - on_since if off_at > -math.inf else 0.0
            on_since, off_at = at, at
            warm_from = at if kind == 0 else at + boot  # a window starts warm; a request boots
            cold += kind  # a request (kind 1) boots the GPU; a window (kind 0) does not
        if kind == 0:  # a warm window: kept on until W after it closes
            off_at = max(off_at, closes + window)
            continue
        wait = max(0.0, warm_from - at)
        waits.append(wait)
        off_at = max(off_at, at + wait + service + window)
    billed += off_at - on_since if off_at > -math.inf else 0.0
    return waits, cold, billed


def _p95(waits: list[float]) -> float:
    if not waits:
        return 0.0
    ordered = sorted(waits)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]  # nearest rank


def _row(
    trace: Trace,
    inputs: CostInputs,
    label: str,
    waits: list[float],
    cold: int,
    gpu_seconds_month: float,
    gpu_seconds: float,
    window: float | None,
    schedule: str | None,
) -> Row:
    n = len(waits)
    waiting = [w for w in waits if w > 0]
    month = inputs.days_per_month * DAY
    gpu_hours = gpu_seconds_month / 3600
    gpu_monthly = gpu_hours * inputs.gpu_price_per_hour * inputs.gpu_count
    wrapper_monthly = inputs.wrapper_price_per_hour * month / 3600
    return Row(
        label=label,
        window=None if window is None else float(window),
        schedule=schedule,
        requests=n,
        cold_starts=cold,
        cold_starts_per_day=cold * DAY / trace.span,
        waited=len(waiting),
        wait_share=len(waiting) / n if n else 0.0,
        mean_wait=sum(waits) / n if n else 0.0,
        mean_wait_waiting=sum(waiting) / len(waiting) if waiting else 0.0,
        p95_wait=_p95(waits),
        gpu_seconds=gpu_seconds,
        gpu_hours_month=gpu_hours,
        gpu_monthly=round(gpu_monthly, 4),
        wrapper_monthly=round(wrapper_monthly, 4),
        monthly=round(gpu_monthly + wrapper_monthly, 4),
    )


def _as_schedule(schedule: WarmSchedule | str | None) -> WarmSchedule | None:
    parsed = WarmSchedule.parse(schedule) if isinstance(schedule, str) else schedule
    return parsed or None  # an empty schedule is no schedule


def _label(window: float, schedule: WarmSchedule | None) -> str:
    text = f"{window:g} s"
    if not schedule:
        return text
    return f"warm {'; '.join(str(w) for w in schedule.windows)}, else {text}"


def simulate(
    trace: Trace,
    inputs: CostInputs,
    schedule: WarmSchedule | str | None = None,
    service_seconds: float = 0.0,
) -> Row:
    """One setting: ``inputs.scaledown_window`` and ``inputs.boot_seconds``, scaled to zero
    outside ``schedule``'s windows (module docstring)."""
    schedule = _as_schedule(schedule)
    window, boot = inputs.scaledown_window, inputs.boot_seconds
    windows = _open_intervals(schedule, trace.start, trace.end)
    waits, cold, billed = _replay(trace, window, boot, service_seconds, windows)
    scale = inputs.days_per_month * DAY / trace.span
    # Outside the windows the trace's own GPU time, scaled; the windows, a whole month's.
    in_windows = sum(b - a for a, b in windows)
    month = (billed - in_windows) * scale
    if schedule:
        open_hours = warm_schedule_cost(schedule, 0.0, days=inputs.days_per_month)
        month += open_hours.open_hours_per_month * 3600
    text = "; ".join(str(w) for w in schedule.windows) if schedule else None
    label = _label(window, schedule)
    return _row(trace, inputs, label, waits, cold, month, billed, window, text)


def simulate_always_on(trace: Trace, inputs: CostInputs) -> Row:
    month = inputs.days_per_month * DAY
    waits = [0.0] * len(trace.times)
    return _row(trace, inputs, "always on", waits, 0, month, trace.span, None, None)


def sweep(
    trace: Trace | Iterable[float],
    inputs: CostInputs | None = None,
    windows: Iterable[float] = DEFAULT_WINDOWS,
    schedules: Iterable[WarmSchedule | str] = (),
    always_on: bool = True,
    service_seconds: float = 0.0,
) -> list[Row]:
    """Every window, then every schedule with every window outside it, then always on.
    ``inputs`` gives the prices and the boot (default: the ``cost`` command's preset)."""
    if not isinstance(trace, Trace):
        trace = Trace.of(trace)
    inputs = inputs or inputs_from_preset(DEFAULT_PRESET)
    windows = sorted(set(float(w) for w in windows))
    rows = []
    for schedule in [None, *(_as_schedule(s) for s in schedules)]:
        for w in windows:
            setting = replace(inputs, scaledown_window=w)
            rows.append(simulate(trace, setting, schedule, service_seconds))
    if always_on:
        rows.append(simulate_always_on(trace, inputs))
    return rows


def _budget_text(max_wait_share: float | None, max_mean_wait: float | None) -> str:
    parts = []
    if max_wait_share is not None:
        parts.append(f"at most {max_wait_share:.1%} of requests wait")
    if max_mean_wait is not None:
        parts.append(f"a mean wait of at most {max_mean_wait:g} s")
    return " and ".join(parts)


def recommend(
    rows: Sequence[Row], max_wait_share: float | None = None, max_mean_wait: float | None = None
) -> Recommendation:
    """The cheapest row within the wait budget (default: at most 5% of requests wait)."""
    if not rows:
        raise ValueError("no settings to choose from")
    if max_wait_share is None and max_mean_wait is None:
        max_wait_share = DEFAULT_MAX_WAIT_SHARE
    budget = _budget_text(max_wait_share, max_mean_wait)
    fits = [
        r
        for r in rows
        if (max_wait_share is None or r.wait_share <= max_wait_share)
        and (max_mean_wait is None or r.mean_wait <= max_mean_wait)
    ]
    if not fits:
        least = min(rows, key=lambda r: (r.wait_share, r.mean_wait, r.monthly))
        return Recommendation(
            least,
            False,
            f"no setting meets the budget ({budget}); the least waiting is {least.label}: "
            f"{least.wait_share:.1%} wait, ${least.monthly:,.2f}/month",
        )
    best = min(fits, key=lambda r: (r.monthly, r.wait_share))
    reason = (
        f"{best.label}: ${best.monthly:,.2f}/month, {best.wait_share:.1%} of requests wait "
        f"(mean {best.mean_wait:.1f} s); the cheapest setting with {budget}"
    )
    cheaper = [r for r in rows if r.monthly < best.monthly]
    if cheaper:
        near = max(cheaper, key=lambda r: r.monthly)
        reason += (
            f"; the next cheaper, {near.label} (${near.monthly:,.2f}), "
            f"has {near.wait_share:.1%} wait"
        )
    return Recommendation(best, True, reason)


# -- reading traffic -----------------------------------------------------------------------


def _timestamp(text: str) -> float:
    """Epoch seconds, or ISO 8601 (a time without a zone is UTC)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if text.endswith(("Z", "z")):  # fromisoformat takes Z from Python 3.11 only
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither epoch seconds nor an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _from_log(lines: list[str]) -> list[float]:
    """The wrapper's JSON log (deploy/core/logs.py): its "request" lines for inference routes.

    The line is written when the response ends, stamped ``ts``; the arrival is ``ts`` less
    ``duration_ms`` (a cold start's request is logged a boot after it arrived). Requests
    refused with a 4xx (bad key, limits, too large) never reached the GPU: left out. Lines
    that are not JSON (the engine's own output, mixed into the same stream) are skipped."""
    times = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("message") != "request":
            continue
        if entry.get("path") not in INFERENCE_PATHS or "ts" not in entry:
            continue
        if 400 <= int(entry.get("status") or 0) < 500:
            continue
        times.append(_timestamp(entry["ts"]) - float(entry.get("duration_ms") or 0) / 1000)
    return times


def _from_csv(text: str) -> list[float]:
    reader = csv.DictReader(io.StringIO(text))
    column = next((c for c in reader.fieldnames or [] if c.strip().lower() == "timestamp"), None)
    if column is None:
        raise ValueError("a CSV trace needs a 'timestamp' column")
    return [_timestamp(row[column]) for row in reader if (row.get(column) or "").strip()]


def load_traffic(path: str | Path) -> Trace:
    """Request arrivals from the wrapper's JSON log, a CSV with a ``timestamp`` column
    (ISO 8601 or epoch seconds), or one timestamp a line (``#`` starts a comment)."""
    path = Path(path)
    text = path.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty")
    if lines[0].startswith("{"):
        times = _from_log(lines)
        if not times:
            raise ValueError(f"{path}: no 'request' log lines for {', '.join(INFERENCE_PATHS)}")
    elif "timestamp" in lines[0].lower() and not lines[0].startswith("#"):
        times = _from_csv(text)
    else:
        times = [_timestamp(line) for line in lines if not line.startswith("#")]
    return Trace.of(times, name=path.name)


# -- synthetic profiles --------------------------------------------------------------------


def _poisson(rng: random.Random, rate_per_hour: float, start: float, end: float) -> list[float]:
    out, at = [], start
    rate = rate_per_hour / 3600
    while rate > 0:
        at += rng.expovariate(rate)
        if at >= end:
            break
        out.append(at)
    return out


def _local_days(start: float, days: int, zone: str) -> list[date]:
    first = datetime.fromtimestamp(start, ZoneInfo(zone)).date()
    return [first + timedelta(days=d) for d in range(-1, days + 1)]  # the span's edges too


def _office_hours(rng: random.Random, rate: float, start: float, end: float, zone: str) -> list:
    out: list[float] = []
    tz = ZoneInfo(zone)
    for day in _local_days(start, round((end - start) / DAY), zone):
        if day.weekday() >= 5:
            continue
        opens = datetime(day.year, day.month, day.day, 9, tzinfo=tz).timestamp()
        closes = datetime(day.year, day.month, day.day, 18, tzinfo=tz).timestamp()
        out += _poisson(rng, rate, max(opens, start), min(closes, end))
    return out


BURSTS_PER_DAY = 4
BURST_SECONDS = 300.0


def _bursty(rng: random.Random, rate: float, start: float, end: float) -> list[float]:
    """``BURSTS_PER_DAY`` bursts at random times of each day, each ``BURST_SECONDS`` long;
    ``rate`` is the day's average, all of it inside the bursts."""
    out: list[float] = []
    in_burst = rate * 24 / BURSTS_PER_DAY * 3600 / BURST_SECONDS  # requests/h inside one
    day = start
    while day < end:
        for _ in range(BURSTS_PER_DAY):
            at = day + rng.uniform(0, DAY - BURST_SECONDS)
            out += _poisson(rng, in_burst, at, min(at + BURST_SECONDS, end))
        day += DAY
    return out


def profile(
    name: str,
    requests_per_hour: float = 40.0,
    seed: int = 0,
    zone: str = "UTC",
    days: int = 30,
) -> Trace:
    """A synthetic month of traffic, the same for the same seed, from ``MONTH_START`` (a Monday):

    * ``office-hours``: Poisson at ``requests_per_hour`` on weekdays 09:00-18:00 in ``zone``,
      nothing at night or at weekends;
    * ``bursty``: a few bursts a day (4 of 5 minutes each, at random times), averaging
      ``requests_per_hour`` over the day;
    * ``uniform``: Poisson at ``requests_per_hour`` all day, every day.
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    if requests_per_hour < 0:
        raise ValueError("requests_per_hour must be >= 0")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{zone!r} is not a time zone (e.g. Europe/Paris, UTC)") from None
    rng = random.Random(f"{name}:{seed}")  # a str seed: stable across Python versions
    start, end = MONTH_START, MONTH_START + days * DAY
    if name == "office-hours":
        times = _office_hours(rng, requests_per_hour, start, end, zone)
    elif name == "bursty":
        times = _bursty(rng, requests_per_hour, start, end)
    else:
        times = _poisson(rng, requests_per_hour, start, end)
    return Trace(tuple(sorted(times)), start, end, f"{name} ({requests_per_hour:g} requests/h)")


def office_hours_schedule(zone: str = "UTC") -> str:
    """The warm schedule matching the office-hours profile."""
    return f"0 9 * * mon-fri 9h {zone}"
