"""The window advisor finds warm schedules by itself: derived from the traffic's busy hours,
searched with every window, listed in its output, and recommended only when cheapest."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from pathlib import Path

from deploy.core import warm_candidates
from deploy.core.schedule import WarmSchedule
from deploy.ops import advisor
from deploy.ops.cli import main
from deploy.ops.cost import MONTH_START

T = MONTH_START  # Monday 2024-01-01 00:00 UTC
DAY = 86400.0
HOUR = 3600.0


def office_bursts(seed: int = 0) -> list[float]:
    """30 days from a Monday: on weekdays, ten bursts at random times between 09:00 and
    17:50 UTC, each of 5 to 13 requests some 30 s apart; nothing at night or at weekends."""
    rng = random.Random(f"office-bursts:{seed}")
    times: list[float] = []
    for day in range(30):
        if day % 7 >= 5:
            continue
        for _ in range(10):
            at = T + day * DAY + 9 * HOUR + rng.uniform(0, 9 * HOUR - 600)
            for _ in range(rng.randint(5, 13)):
                at += rng.expovariate(1 / 30)
                times.append(at)
    return sorted(times)


def _csv(path: Path, times: list[float]) -> Path:
    iso = (datetime.fromtimestamp(t, timezone.utc).isoformat() for t in times)
    path.write_text("timestamp\n" + "\n".join(iso) + "\n")
    return path


def _advice(capsys, *args: str) -> dict:
    assert main(["cost", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _recommended(data: dict) -> dict:
    (row,) = [r for r in data["rows"] if r["label"] == data["recommended"]["label"]]
    return row


def _open_hours(schedule: str) -> set[tuple[int, int]]:
    """(weekday, UTC hour) of each hour a schedule is open in the second week of 2024."""
    week = WarmSchedule.parse(schedule)
    at = [T + 7 * DAY + h * HOUR + 1 for h in range(7 * 24)]
    return {(int((t - T) // DAY) % 7, int((t - T) % DAY // HOUR)) for t in at if week.is_open(t)}


def test_office_hours_bursts_get_a_schedule_at_under_30_percent_of_always_on(
    capsys, tmp_path: Path
) -> None:
    times = office_bursts()
    assert 1800 <= len(times) <= 2200
    data = _advice(capsys, "--traffic", str(_csv(tmp_path / "office.csv", times)))
    best = _recommended(data)
    always = next(r for r in data["rows"] if r["window"] is None)
    assert data["recommended"]["fits"] is True
    assert best["schedule"] in [c["schedule"] for c in data["derived"]["schedules"]]
    assert best["monthly"] <= 0.30 * always["monthly"]
    assert best["wait_share"] <= 0.05
    # Warm on weekdays in office hours, an hour either side at most.
    assert all(day < 5 and 8 <= hour < 19 for day, hour in _open_hours(best["schedule"]))
    # No window alone comes near: the bursts are too far apart.
    windows = [r for r in data["rows"] if r["schedule"] is None and r["window"]]
    assert min(r["wait_share"] for r in windows) > 0.05
    derived = data["derived"]
    assert derived["zone"] == "UTC" and len(derived["schedules"]) >= 2
    assert data["schedules_tried"] == [c["schedule"] for c in derived["schedules"]]
    # Every derived schedule was replayed with every window.
    for candidate in derived["schedules"]:
        tried = [r for r in data["rows"] if r["schedule"] == candidate["schedule"]]
        assert len(tried) == len(advisor.DEFAULT_WINDOWS)
        assert candidate["variant"] in ("tight", "padded", "weekdays")


def test_the_table_lists_what_it_derived_and_marks_the_recommendation(
    capsys, tmp_path: Path
) -> None:
    trace = str(_csv(tmp_path / "office.csv", office_bursts()))
    found = _advice(capsys, "--traffic", trace)
    derived = [c["schedule"] for c in found["derived"]["schedules"]]
    assert main(["cost", "--traffic", trace]) == 0
    lines = capsys.readouterr().out.splitlines()
    (head,) = [n for n, line in enumerate(lines) if line.startswith("derived from the traffic")]
    assert lines[head].startswith(
        f"derived from the traffic (busy hours by weekday and hour, UTC): {len(derived)} schedules"
    )
    listed = lines[head + 1 : head + 1 + len(derived)]
    assert [line.split(": ", 1)[1] for line in listed] == derived
    assert listed[0].startswith("  1. tight, busy at 25%, ")
    # One row per derived schedule (its best window), then always on.
    rows = [line for line in lines if line.startswith("│")]
    assert sum("derived" in line for line in rows) == len(derived)
    (best,) = [line for line in rows if "<- recommended" in line]
    number = derived.index(found["recommended"]["schedule"]) + 1
    assert f"<- recommended, derived {number}" in best
    assert lines[-1] == f"recommended: {found['recommended']['reason']}"


def test_zone_buckets_the_hours(capsys, tmp_path: Path) -> None:
    # The same traffic read in New York time (EST all January): the same hours, 5 h earlier
    # on the clock.
    trace = str(_csv(tmp_path / "office.csv", office_bursts()))
    utc = _advice(capsys, "--traffic", trace)
    new_york = _advice(capsys, "--traffic", trace, "--zone", "America/New_York")
    assert new_york["derived"]["zone"] == "America/New_York"
    pairs = zip(utc["derived"]["schedules"], new_york["derived"]["schedules"], strict=True)
    for here, there in pairs:
        assert there["schedule"].endswith(" America/New_York")
        assert _open_hours(here["schedule"]) == _open_hours(there["schedule"])
    assert new_york["recommended"]["schedule"] != utc["recommended"]["schedule"]
    assert _recommended(new_york)["monthly"] == _recommended(utc)["monthly"]


def test_a_given_warm_schedule_is_still_tried(capsys, tmp_path: Path) -> None:
    trace = _csv(tmp_path / "office.csv", office_bursts())
    mine = "0 10 * * mon-fri 6h UTC"
    data = _advice(capsys, "--traffic", str(trace), "--warm-schedule", mine)
    assert mine not in [c["schedule"] for c in data["derived"]["schedules"]]
    assert data["schedules_tried"][-1] == mine
    assert len([r for r in data["rows"] if r["schedule"] == mine]) == len(advisor.DEFAULT_WINDOWS)
    # Given as derived already (the zone left implicit): tried once.
    first = data["derived"]["schedules"][0]["schedule"]
    again = _advice(capsys, "--traffic", str(trace), "--warm-schedule", first.removesuffix(" UTC"))
    assert again["schedules_tried"] == data["schedules_tried"][:-1]


def test_uniform_traffic_gets_no_schedule_when_a_window_or_always_on_is_cheaper(
    capsys,
) -> None:
    for rate in ("40", "5"):
        data = _advice(capsys, "--profile", "uniform", "--requests-per-hour", rate)
        assert data["derived"]["schedules"] == []  # no idle hours to schedule around
        assert _recommended(data)["schedule"] is None
    # An office-hours schedule, given, is tried and loses to a window: it keeps nobody from
    # waiting at night, so it must be paired with a window as long as the window alone.
    office = advisor.office_hours_schedule()
    data = _advice(capsys, "--profile", "uniform", "--requests-per-hour", "5",
                   "--warm-schedule", office)  # fmt: skip
    best = _recommended(data)
    assert best["schedule"] is None and best["window"] is not None
    fitting = [r for r in data["rows"] if r["schedule"] == office and r["wait_share"] <= 0.05]
    assert fitting and min(r["monthly"] for r in fitting) > best["monthly"]


def test_thin_uniform_traffic_gets_no_schedule_fitted_to_its_lucky_lulls(monkeypatch) -> None:
    trace = advisor.profile("uniform", requests_per_hour=0.5)
    found = advisor.search(trace)
    assert found.candidates == [] and found.best.row.schedule is None
    # Without the quiet-hours rule, a schedule fitted to this month's chance lulls would be
    # recommended: it looks cheaper than always on on the very trace it was fitted to.
    monkeypatch.setattr(warm_candidates, "MAX_CLOSED_SHARE", 1.0)
    assert advisor.search(trace).best.row.schedule is not None


def test_sparse_traffic_gets_no_schedule(capsys, tmp_path: Path) -> None:
    # 23 requests at random in 30 days, and two on Tuesdays at 10:15: a coincidence, not
    # a busy hour, though that hour saw requests on two of its four days.
    rng = random.Random("sparse")
    times = [T + rng.uniform(0, 30 * DAY) for _ in range(23)]
    times = sorted([*times, T + 1 * DAY + 10.25 * HOUR, T + 8 * DAY + 10.25 * HOUR])
    data = _advice(capsys, "--traffic", str(_csv(tmp_path / "sparse.csv", times)))
    assert data["derived"]["schedules"] == []
    assert all(r["schedule"] is None for r in data["rows"])
    assert _recommended(data)["schedule"] is None
    assert main(["cost", "--traffic", str(tmp_path / "sparse.csv")]) == 0
    out = capsys.readouterr().out
    assert "derived from the traffic (busy hours by weekday and hour, UTC): none: " in out


def test_the_office_hours_profile_finds_its_own_schedule() -> None:
    found = advisor.search(advisor.profile("office-hours", requests_per_hour=10))
    assert found.candidates[0].schedule == advisor.office_hours_schedule()
    assert found.best.row.schedule == advisor.office_hours_schedule()
