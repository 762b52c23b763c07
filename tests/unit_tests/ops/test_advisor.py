"""The window advisor: the replay matches a hand calculation, the recommendation keeps to the
budget, and `vllm-autoscale cost --traffic/--profile` reports it (reading traffic and the
profiles: test_traffic.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from deploy.ops import advisor
from deploy.ops.advisor import Trace, profile, recommend, simulate, sweep
from deploy.ops.cli import main
from deploy.ops.cost import MONTH_START, inputs_from_preset, wait_share

T = MONTH_START  # Monday 2024-01-01 00:00 UTC
HOUR = 3600.0
# modal-a100-80gb: GPU $2.50/h x 1, wrapper $0.0099/h; here W = 60 s and B = 10 s.
INPUTS = replace(inputs_from_preset("modal-a100-80gb"), scaledown_window=60, boot_seconds=10)


def test_replay_matches_a_hand_calculation() -> None:
    # Six requests in an hour-long trace, W = 60 s, B = 10 s, service time 0:
    #   t=0    GPU off: boot 0..10, waits 10; served at 10, off at 10+60 = 70
    #   t=4    booting: waits the rest, 6; off still at 70
    #   t=30   on: waits 0; off at 90
    #   t=85   on (85 < 90): waits 0; off at 145        -> first wake 0..145 = 145 s
    #   t=200  off (200 >= 145): boot 200..210, waits 10; off at 270
    #   t=206  booting: waits 4; off at 270              -> second wake 200..270 = 70 s
    # Waits 10, 6, 0, 0, 10, 4: 4 of 6 waited, mean 30/6 = 5 s, mean of those who waited
    # 30/4 = 7.5 s, p95 (nearest rank: the 6th of 6) = 10 s; 2 cold starts.
    # GPU 145 + 70 = 215 s in an hour; a 30-day month is 720 hours: 215 * 720 = 154,800 s
    # = 43 GPU hours = $107.50; the wrapper 720 h * $0.0099 = $7.128; total $114.628.
    trace = Trace((0.0, 4.0, 30.0, 85.0, 200.0, 206.0), start=0.0, end=HOUR, name="hand")
    row = simulate(trace, INPUTS)
    assert (row.label, row.window, row.schedule) == ("60 s", 60.0, None)
    assert (row.requests, row.cold_starts, row.waited) == (6, 2, 4)
    assert row.wait_share == 4 / 6
    assert (row.mean_wait, row.mean_wait_waiting, row.p95_wait) == (5.0, 7.5, 10.0)
    assert row.gpu_seconds == 215.0
    assert row.gpu_hours_month == 43.0
    assert row.cold_starts_per_day == 48.0  # 2 an hour
    assert (row.gpu_monthly, row.wrapper_monthly, row.monthly) == (107.5, 7.128, 114.628)


def test_p95_is_the_nearest_rank() -> None:
    assert advisor._p95([float(i) for i in range(1, 21)]) == 19.0  # the 19th of 20
    assert advisor._p95([5.0]) == 5.0 and advisor._p95([]) == 0.0


def test_a_request_at_the_very_second_the_gpu_turns_off_finds_it_off() -> None:
    # 0: boot to 10, off at 70. 70: off, so a second boot.
    row = simulate(Trace((0.0, 70.0), 0.0, HOUR), INPUTS)
    assert (row.cold_starts, row.waited, row.gpu_seconds) == (2, 2, 140.0)


def test_service_time_delays_the_countdown() -> None:
    # 0: boot to 10, served 10..40 (service 30 s), off at 40+60 = 100; 95 is still warm.
    row = simulate(Trace((0.0, 95.0), 0.0, HOUR), INPUTS, service_seconds=30)
    assert (row.cold_starts, row.waited) == (1, 1)
    assert row.gpu_seconds == 95 + 30 + 60  # off at 185


def test_warm_window_hand_calculation() -> None:
    # One day (Monday), a warm window 09:00-10:00 UTC every day, W = 60 s, B = 10 s:
    #   08:00:00  off: waits 10, on 08:00:00..08:01:10                      (70 s)
    #   09:00:00  window opens: warm at once, kept on until 10:00 + 60 s
    #   09:30:00  inside: waits 0
    #   09:59:30  inside: waits 0; off at max(10:00, 09:59:30) + 60 = 10:01:00
    #   10:00:30  after the window, in its tail: waits 0; off at 10:01:30  (09:00..10:01:30
    #             = 3,690 s, 3,600 of them in the window)
    #   10:05:00  off: waits 10, on until 10:06:10                          (70 s)
    # GPU 3,830 s that day, 230 s outside the window: x 30 days = 6,900 s; the window
    # itself priced over a month by cost.warm_schedule_cost: 30 h = 108,000 s. Total
    # 114,900 s = 31.9167 GPU hours = $79.7917 a month; with the wrapper $86.9197.
    times = (8, 9.5, 10 - 30 / HOUR, 10 + 30 / HOUR, 10 + 300 / HOUR)
    trace = Trace(tuple(T + h * HOUR for h in times), T, T + 24 * HOUR, "one day")
    row = simulate(trace, INPUTS, "0 9 * * * 1h UTC")
    assert row.label == "warm 0 9 * * * 1h UTC, else 60 s"
    assert (row.cold_starts, row.waited, row.p95_wait) == (2, 2, 10.0)
    assert row.mean_wait == 20 / 5
    assert row.gpu_seconds == 3830.0
    assert row.gpu_hours_month == 114_900 / 3600
    assert (row.gpu_monthly, row.monthly) == (79.7917, 86.9197)


def test_warm_windows_keep_waits_at_zero_inside_them() -> None:
    trace = profile("office-hours", requests_per_hour=40)
    warm = simulate(trace, INPUTS, advisor.office_hours_schedule())
    cold = simulate(trace, INPUTS)
    assert warm.requests == cold.requests > 7000
    assert (warm.waited, warm.cold_starts, warm.p95_wait) == (0, 0, 0.0)
    assert cold.waited > 0  # the same traffic without the schedule does wait
    # 22 weekdays x 9 h warm, plus a 60 s tail after each window: nothing else runs.
    assert warm.gpu_hours_month == pytest.approx(22 * 9 + 22 * 60 / HOUR)


def test_always_on_never_waits_and_bills_the_whole_month() -> None:
    rows = sweep(profile("uniform", requests_per_hour=10), INPUTS, windows=[60])
    always = rows[-1]
    assert always.label == "always on" and always.window is None
    assert (always.waited, always.wait_share, always.mean_wait, always.p95_wait) == (0, 0, 0, 0)
    assert always.gpu_hours_month == 30 * 24
    assert always.monthly == round(30 * 24 * (2.5 + 0.0099), 4)


def test_sweep_covers_every_window_and_schedule() -> None:
    trace = Trace.of([T, T + 50, T + 4000])
    rows = sweep(trace, INPUTS, windows=[300, 60], schedules=["0 9 * * * 1h UTC"])
    assert [r.label for r in rows] == [
        "60 s",
        "300 s",
        "warm 0 9 * * * 1h UTC, else 60 s",
        "warm 0 9 * * * 1h UTC, else 300 s",
        "always on",
    ]
    # A longer window never waits more and never costs less on the same trace.
    assert rows[1].waited <= rows[0].waited and rows[1].monthly >= rows[0].monthly
    assert sweep([1.0, 2.0], INPUTS, windows=[60], always_on=False)[0].label == "60 s"


def test_simulation_agrees_with_the_poisson_formula() -> None:
    # 20 requests/h all day, W = 120 s, B = 90 s: the cost model's renewal formula gives
    # (1 + λB) / (λB + e^{λW}) = 1.5 / (0.5 + e^{2/3}) = 61.3%.
    inputs = replace(INPUTS, scaledown_window=120, boot_seconds=90, requests_per_hour=20)
    row = simulate(profile("uniform", requests_per_hour=20), inputs)
    expected = wait_share(inputs)
    assert expected == pytest.approx(0.6128, abs=1e-4)
    assert row.wait_share == pytest.approx(expected, abs=0.02)


def _row(label: str, monthly: float, share: float, mean: float = 0.0) -> advisor.Row:
    base = simulate(Trace.of([0.0, 1.0]), INPUTS)
    return replace(base, label=label, monthly=monthly, wait_share=share, mean_wait=mean)


def test_recommend_picks_the_cheapest_within_the_budget() -> None:
    rows = [_row("30 s", 100, 0.40, 30), _row("600 s", 300, 0.04, 3), _row("1200 s", 350, 0.01, 1)]
    rows.append(_row("always on", 1800, 0.0))
    best = recommend(rows)  # default budget: at most 5% wait
    assert best.fits and best.row.label == "600 s"
    assert "at most 5.0% of requests wait" in best.reason
    assert "30 s ($100.00), has 40.0% wait" in best.reason
    assert recommend(rows, max_wait_share=0.02).row.label == "1200 s"
    assert recommend(rows, max_mean_wait=40).row.label == "30 s"
    assert "mean wait of at most 40 s" in recommend(rows, max_mean_wait=40).reason


def test_recommend_says_when_nothing_fits() -> None:
    rows = [_row("30 s", 100, 0.40), _row("600 s", 300, 0.10), _row("1200 s", 350, 0.10)]
    best = recommend(rows, max_wait_share=0.05)
    assert not best.fits
    assert best.row.label == "600 s"  # the least waiting, and of those the cheapest
    assert best.reason.startswith("no setting meets the budget (at most 5.0% of requests wait)")
    with pytest.raises(ValueError, match="no settings"):
        recommend([])


# -- the command -----------------------------------------------------------------------------


def test_cli_table_marks_the_recommendation_and_the_seed_default(capsys) -> None:
    assert main(["cost", "--profile", "office-hours", "--requests-per-hour", "40"]) == 0
    out = capsys.readouterr().out
    assert "office-hours (40 requests/h):" in out and "figures scaled to 30 days" in out
    for header in ("USD/month", "cold starts/day", "requests waiting", "mean wait s", "p95"):
        assert header in out
    lines = out.splitlines()
    (seed_line,) = [line for line in lines if "seed default" in line]
    assert seed_line.split("│")[1].strip() == "120 s"
    (best_line,) = [line for line in lines if "<- recommended" in line]
    # The office-hours profile tries its matching warm schedule by itself, and it wins.
    assert "warm 0 9 * * mon-fri 9h UTC, else 30 s" in best_line
    assert "│             0.0% │" in best_line
    assert lines[-1].startswith("recommended: warm 0 9 * * mon-fri 9h UTC, else 30 s: $")


def test_cli_json(capsys, tmp_path: Path) -> None:
    trace = tmp_path / "times.txt"
    trace.write_text("\n".join(str(T + 9 * HOUR + 7 * i) for i in range(50)))
    args = ["cost", "--traffic", str(trace), "--boot-seconds", "30", "--json"]
    assert main([*args, "--warm-schedule", "0 9 * * * 1h UTC", "--scaledown-window", "45"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trace"]["requests"] == 50 and data["trace"]["name"] == "times.txt"
    assert data["prices"]["boot_seconds"] == 30
    labels = [r["label"] for r in data["rows"]]
    assert len(labels) == 2 * 9 + 1 and "45 s" in labels and labels[-1] == "always on"
    assert "warm 0 9 * * * 1h UTC, else 45 s" in labels
    # One burst of 50 requests 7 s apart from 09:00, boot 30 s: one cold start at any window;
    # waits 30, 23, 16, 9, 2 then 45 zeros, so p95 (the 48th of 50) is 16 s. Inside the
    # 09:00 warm window nobody waits.
    rows = data["rows"]
    assert {r["cold_starts"] for r in rows if r["schedule"] is None and r["window"]} == {1}
    assert {r["waited"] for r in rows if r["schedule"]} == {0}
    row = rows[labels.index("45 s")]
    assert (row["waited"], row["mean_wait"], row["p95_wait"]) == (5, 80 / 50, 16.0)
    assert data["recommended"]["fits"] is True
    assert data["recommended"]["label"] in labels


def test_cli_rejects_mixed_or_wrong_arguments(capsys, tmp_path: Path) -> None:
    trace = tmp_path / "t.txt"
    trace.write_text("1\n2\n")
    assert main(["cost", "--traffic", str(trace), "--requests-per-hour", "5"]) == 2
    assert "--requests-per-hour sets a --profile's rate" in capsys.readouterr().err
    assert main(["cost", "--profile", "uniform", "--max-wait-share", "5"]) == 2
    assert "0.05 is 5%" in capsys.readouterr().err
    assert main(["cost", "--profile", "uniform", "--warm-schedule", "9 to 5"]) == 2
    assert "a window is 'MIN HOUR DOM MON DOW LENGTH [ZONE]'" in capsys.readouterr().err
    assert main(["cost", "--traffic", str(tmp_path / "missing.log")]) == 2
    assert "missing.log" in capsys.readouterr().err
    assert main(["cost", "--profile", "office-hours", "--zone", "Mars/Olympus"]) == 2
    assert "'Mars/Olympus' is not a time zone" in capsys.readouterr().err
    assert main(["cost", "--hours", "2", "--max-wait-share", "0.01"]) == 2
    assert "need --traffic or --profile" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cost", "--traffic", str(trace), "--profile", "uniform"])


def _saved_figures(monkeypatch) -> list:
    import matplotlib.figure

    figures = []
    save = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        figures.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return figures


def test_cli_plot_draws_the_frontier(capsys, tmp_path: Path, monkeypatch) -> None:
    figures = _saved_figures(monkeypatch)
    plot = tmp_path / "frontier.png"
    assert main(["cost", "--profile", "bursty", "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {plot}" in capsys.readouterr().err
    (ax,) = figures[0].axes
    assert ax.get_title().startswith("bursty (40 requests/h): ")
    assert "requests over 30.0 days" in ax.get_title()
    assert ax.get_xlabel() == "requests that wait for a boot, %"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "recommended: always on" in legend and "budget: 5%" in legend
    labels = {t.get_text() for t in ax.texts}
    assert {"always on", "30 s"} <= labels
