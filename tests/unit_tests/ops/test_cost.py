"""The cost model: the seed's figures reproduced, then corrected."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from deploy.core.pricing import request_cost
from deploy.core.schedule import WarmSchedule
from deploy.ops.cli import main
from deploy.ops.cost import (
    PRESETS,
    CostInputs,
    curve,
    estimate,
    inputs_from_preset,
    wait_share,
    warm_schedule_cost,
)


def test_reproduces_the_seed() -> None:
    report = estimate(inputs_from_preset("seed", hours_per_day=2))
    assert report.always_on_monthly == pytest.approx(792.00)
    assert round(report.seed_autoscaled_monthly, 2) == 66.07
    assert math.floor(report.seed_saving * 100) == 91  # the seed's "91% saving"


def test_corrected_figure_adds_each_wakes_boot_and_idle_tail() -> None:
    inputs = inputs_from_preset("seed", hours_per_day=2)
    report = estimate(inputs)
    # One block of use a day: one boot (90 s) and one idle tail (120 s) on top of 2 h.
    extra = (90 + 120) / 3600 * 1.10 * 30
    assert report.autoscaled_monthly == pytest.approx(report.seed_autoscaled_monthly + extra)
    assert report.wakes_per_day == 1
    assert report.saving < report.seed_saving


def test_sparse_requests_pay_a_wake_each() -> None:
    # 2 requests an hour, 30 min apart on average: nearly every one wakes the GPU.
    report = estimate(CostInputs(gpu_price_per_hour=2.5, hours_per_day=8, requests_per_hour=2))
    n = 16
    assert report.wakes_per_day == pytest.approx(1 + n * math.exp(-2 / 3600 * 120))
    assert report.wakes_per_day > 15
    per_wake = report.gpu_hours_per_day * 3600 / report.wakes_per_day
    assert 150 < per_wake < 90 + 120 + 1  # boot + (almost all of) the window, per wake


def test_dense_requests_keep_one_container_warm() -> None:
    report = estimate(CostInputs(gpu_price_per_hour=2.5, hours_per_day=6, requests_per_hour=600))
    assert report.wakes_per_day == pytest.approx(1, abs=0.01)
    assert report.gpu_hours_per_day == pytest.approx(6, abs=0.1)


def test_break_even_and_curve() -> None:
    inputs = inputs_from_preset("modal-a100-80gb")
    report = estimate(inputs)
    assert report.always_on_monthly == pytest.approx(2.5 * 24 * 30)
    # Continuous use a day: always-on wins only once the use nearly fills the day.
    assert 23 < report.break_even_hours_per_day < 24
    points = curve(inputs)
    assert points[0]["autoscaled"] < points[-1]["autoscaled"]
    assert all(p["always_on"] == report.always_on_monthly for p in points)
    assert PRESETS["modal-a100-80gb"]["gpu_price_per_hour"] == 2.5


def test_request_cost_uses_the_same_prices() -> None:
    cost = request_cost(engine_seconds=3.6, cold_start_seconds=36, gpu_price_per_hour=2.5)
    assert cost["usd"] == pytest.approx(0.0025) and cost["cold_start_usd"] == pytest.approx(0.025)
    assert request_cost(1, 0, 2.5, gpu_count=2)["usd"] == pytest.approx(2 * 2.5 / 3600)


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        inputs_from_preset("nope")


def test_cli_json(capsys) -> None:
    assert main(["cost", "--preset", "seed", "--hours", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["always_on_monthly"] == pytest.approx(792)
    assert round(data["seed_autoscaled_monthly"], 2) == 66.07
    assert data["autoscaled_monthly"] > data["seed_autoscaled_monthly"]


def test_cli_table_and_plot(capsys, tmp_path) -> None:
    plot = tmp_path / "cost.png"
    assert main(["cost", "--preset", "seed", "--hours", "2", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "$    792.00/month" in out and "$     66.07/month" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_share_of_requests_that_wait_for_a_boot() -> None:
    # The seed at 20 requests/h: λW = 2/3, λB = 1/2; (1 + λB) / (λB + e^{λW}).
    inputs = inputs_from_preset("seed", hours_per_day=2, requests_per_hour=20)
    assert estimate(inputs).wait_share == pytest.approx(1.5 / (0.5 + math.exp(2 / 3)))
    assert estimate(inputs).wait_share == pytest.approx(0.613, abs=1e-3)
    # An instant boot: exactly the requests after a gap longer than the window, e^{-λW}.
    instant = CostInputs(gpu_price_per_hour=1, requests_per_hour=20, boot_seconds=0)
    assert wait_share(instant) == pytest.approx(math.exp(-20 / 3600 * 120))
    assert wait_share(replace(instant, requests_per_hour=1e6)) == 0.0  # no overflow
    assert estimate(inputs_from_preset("seed", hours_per_day=2)).wait_share is None


def test_warm_schedule_cost_counts_a_month_of_windows_from_a_monday() -> None:
    weekdays = WarmSchedule.parse("0 9 * * mon-fri 9h UTC")
    cost = warm_schedule_cost(weekdays, gpu_price_per_hour=2.5)
    assert cost.open_hours_per_month == 22 * 9  # 30 days from Monday: 22 weekdays
    assert cost.monthly == pytest.approx(22 * 9 * 2.5)
    assert warm_schedule_cost(weekdays, 2.5, gpu_count=2).monthly == pytest.approx(2 * 495)
    daily = warm_schedule_cost(WarmSchedule.parse("0 9 * * * 1h UTC"), 1.0, days=7)
    assert daily.open_hours_per_month == 7


def test_cli_says_how_many_requests_wait(capsys) -> None:
    args = ["cost", "--preset", "seed", "--hours", "2", "--requests-per-hour", "20"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "GPU billed 1.51 h/day over 21.5 wakes" in out
    assert "61% of requests wait for a boot (up to 90 s)" in out
    assert main(["cost", "--preset", "seed", "--hours", "2"]) == 0
    assert "the day's first request waits for the boot (90 s)" in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["wait_share"] == pytest.approx(0.6128, abs=1e-4)


def test_cli_plot_names_the_rate_and_window_and_marks_the_input(tmp_path, monkeypatch) -> None:
    import matplotlib.figure

    figures = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(
        matplotlib.figure.Figure,
        "savefig",
        lambda fig, *a, **k: figures.append(fig) or save(fig, *a, **k),
    )
    args = ["cost", "--preset", "seed", "--hours", "3", "--requests-per-hour", "20"]
    assert main([*args, "--plot", str(tmp_path / "c.png")]) == 0
    (ax,) = figures[0].axes
    assert ax.get_title() == "Monthly cost (seed): 20 requests/h, window 120 s, boot 90 s"
    (mark,) = ax.collections  # the user's own point, on the autoscaled curve
    report = estimate(inputs_from_preset("seed", hours_per_day=3, requests_per_hour=20))
    assert tuple(mark.get_offsets()[0]) == pytest.approx((3, report.autoscaled_monthly))
    assert any(t.get_text().startswith("you: 3 h/day, $") for t in ax.texts)
