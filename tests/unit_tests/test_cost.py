"""The cost model: the seed's figures reproduced, then corrected."""

from __future__ import annotations

import json
import math

import pytest

from deploy.cli import main
from deploy.cost import PRESETS, CostInputs, curve, estimate, inputs_from_preset, request_cost


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
