"""Reading traffic for the window advisor: the wrapper's JSON log, a CSV, one timestamp a line;
and the synthetic profiles, reproducible by seed and shaped as named."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from deploy.core.logs import configure_logging
from deploy.ops.cost import MONTH_START
from deploy.ops.traffic import BURSTS_PER_DAY, PROFILES, load_traffic, profile

T = MONTH_START  # Monday 2024-01-01 00:00 UTC
HOUR = 3600.0


# -- reading traffic -------------------------------------------------------------------------


@pytest.fixture
def wrapper_log(tmp_path: Path):
    """The wrapper's real JSON log lines (deploy/core/logs.py), with chosen record times."""
    root = logging.getLogger("vllm_autoscale")
    saved = root.handlers[:], root.level, root.propagate
    configure_logging("INFO")
    path = tmp_path / "wrapper.log"
    stream = path.open("w")
    root.handlers[0].setStream(stream)
    log = logging.getLogger("vllm_autoscale.wrapper")
    times: list[float] = []

    def stamp(record: logging.LogRecord) -> bool:
        record.created = times.pop(0)
        record.msecs = record.created % 1 * 1000
        return True

    log.addFilter(stamp)

    def write(at: float, message: str, **extra) -> None:
        times.append(at)
        log.info(message, extra=extra)

    yield path, write
    log.removeFilter(stamp)
    stream.close()
    root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]


def test_load_traffic_from_the_wrappers_json_log(wrapper_log) -> None:
    path, write = wrapper_log
    # Logged when the response ends: a cold start's request arrived 90.5 s before its line.
    write(T + 100.5, "request", method="POST", path="/v1/chat/completions", status=200,
          duration_ms=90500.0)  # fmt: skip
    write(T + 101.25, "request", method="GET", path="/health", status=200, duration_ms=1.0)
    write(T + 120.0, "request", method="POST", path="/chat", status=200, duration_ms=1000.0)
    write(
        T + 130.0,
        "request",
        method="POST",
        path="/v1/chat/completions",
        status=429,
        duration_ms=0.5,
    )  # fmt: skip  (refused by the gateway: never reached the GPU)
    write(T + 140.0, "engine warm")
    write(T + 150.0, "request", method="POST", path="/v1/chat/completions/batch", status=200,
          duration_ms=2000.0)  # fmt: skip
    with path.open("a") as f:
        f.write("INFO vllm: not a JSON line\n")
    first = json.loads(path.read_text().splitlines()[0])
    assert first["ts"] == "2024-01-01T00:01:40.500Z" and first["message"] == "request"
    trace = load_traffic(path)
    assert trace.times == (T + 10.0, T + 119.0, T + 148.0)
    assert (trace.start, trace.end, trace.name) == (T + 10.0, T + 148.0, "wrapper.log")


def test_load_traffic_from_a_csv(tmp_path: Path) -> None:
    path = tmp_path / "requests.csv"
    path.write_text(
        "model,Timestamp\n"
        "m,2024-01-01T09:00:30+00:00\n"
        "m,2024-01-01T09:00:00Z\n"
        "m,1704099660\n"  # epoch seconds: 09:01:00
        "m,2024-01-01T10:00:00+01:00\n"  # 09:00 UTC
    )
    trace = load_traffic(path)
    nine = T + 9 * HOUR
    assert trace.times == (nine, nine, nine + 30, nine + 60)
    (tmp_path / "bad.csv").write_text("when,timestamp_ms\n1,2\n")
    with pytest.raises(ValueError, match="'timestamp' column"):
        load_traffic(tmp_path / "bad.csv")


def test_load_traffic_from_one_timestamp_a_line(tmp_path: Path) -> None:
    path = tmp_path / "times.txt"
    path.write_text(
        "# timestamps of my requests\n1704099630.5\n\n2024-01-01T09:00:00\n1704099660\n"
    )
    assert load_traffic(path).times == (T + 9 * HOUR, T + 9 * HOUR + 30.5, T + 9 * HOUR + 60)
    path.write_text("yesterday\n")
    with pytest.raises(ValueError, match="neither epoch seconds nor an ISO 8601"):
        load_traffic(path)
    path.write_text("1704099630\n")
    with pytest.raises(ValueError, match="two distinct timestamps"):
        load_traffic(path)


# -- profiles --------------------------------------------------------------------------------


def test_profiles_are_deterministic_by_seed() -> None:
    for name in PROFILES:
        a, b = profile(name, 30, seed=1), profile(name, 30, seed=1)
        assert a == b and len(a.times) > 1000
        assert profile(name, 30, seed=2).times != a.times
        assert (a.start, a.end) == (T, T + 30 * 24 * HOUR)
        assert list(a.times) == sorted(a.times)
    with pytest.raises(ValueError, match="unknown profile"):
        profile("weekend")


def test_office_hours_has_no_requests_at_night_or_at_weekends() -> None:
    for zone in ("UTC", "Europe/Paris"):
        trace = profile("office-hours", requests_per_hour=40, zone=zone)
        local = [datetime.fromtimestamp(t, ZoneInfo(zone)) for t in trace.times]
        assert all(9 <= d.hour < 18 and d.weekday() < 5 for d in local)
        # 22 weekdays x 9 h x 40/h = 7,920 expected: Poisson, well within 5%.
        assert abs(len(trace.times) - 7920) < 400
        assert len({d.date() for d in local}) >= 21


def test_bursty_traffic_comes_in_a_few_bursts_a_day() -> None:
    trace = profile("bursty", requests_per_hour=40)
    assert abs(len(trace.times) - 40 * 24 * 30) < 1500
    gaps = [b - a for a, b in zip(trace.times, trace.times[1:], strict=False)]
    long_gaps = sum(g > 600 for g in gaps)
    assert 30 * 2 < long_gaps <= 30 * BURSTS_PER_DAY  # bursts may overlap, not split
    first_day = [t for t in trace.times if t < T + 24 * HOUR]
    hours = {datetime.fromtimestamp(t, timezone.utc).hour for t in first_day}
    assert len(hours) <= 2 * BURSTS_PER_DAY  # a burst spans at most two clock hours
