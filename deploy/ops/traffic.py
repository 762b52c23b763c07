"""The traffic the window advisor replays: request arrival times, read from a trace or made up.

* Traces: the wrapper's JSON log (its "request" lines for the inference routes, each arrival
  its line's ``ts`` less ``duration_ms``), a CSV with a ``timestamp`` column, or one timestamp
  a line; timestamps are epoch seconds or ISO 8601 (UTC without a zone).
* Synthetic profiles, a month from ``cost.MONTH_START`` (a Monday), the same for the same
  seed: ``office-hours``, ``bursty`` and ``uniform`` (``profile``).
"""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..core.advisor import DAY, MONTH_START, Trace

__all__ = [
    "BURSTS_PER_DAY",
    "BURST_SECONDS",
    "DAY",
    "INFERENCE_PATHS",
    "PROFILES",
    "Trace",
    "load_traffic",
    "office_hours_schedule",
    "profile",
]

# The wrapper's inference routes (deploy/wrapper/routes/openai.py, routes_seed.py), written
# out: importing the routes would pull in FastAPI for a file reader.
INFERENCE_PATHS = ("/v1/chat/completions", "/v1/chat/completions/batch", "/chat")

PROFILES = ("office-hours", "bursty", "uniform")


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
