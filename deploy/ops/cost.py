"""What the service costs a month, always on or scaled to zero, and what one request costs.

The seed's arithmetic bills an autoscaled GPU only for the hours of use. A GPU that scales to
zero also pays, on every wake, for its boot and for the idle tail before it is released
(``scaledown_window``). With requests arriving at random (Poisson, ``requests_per_hour``
during the hours of use), a gap longer than the window ends a wake, so:

    wakes/day   = 1 + N * exp(-λW)            N = requests a day, λ = rate, W = window
    GPU on/day  = N * (1 - exp(-λW)) / λ + wakes * boot      (each request keeps the GPU
                                                               on for min(next gap, W))

Without a request rate the use is one continuous block a day: hours + one boot + one tail.

The share of requests that wait for a boot follows from the same Poisson arrivals, counted
per wake (a renewal argument): a wake starts with the request that finds the GPU off; the
λB requests arriving during its boot wait too; after the boot the GPU serves a run of
requests, each following the last within W, until a gap outlasts W (on average e^{λW} - 1
of them). So

    share waiting = (1 + λB) / (λB + e^{λW})     (= e^{-λW} with an instant boot)

``warm_schedule_cost`` prices a warm schedule: its open hours over a month, from a fixed
Monday, at the GPU's price (deploy/core/advisor.py adds what scaling to zero costs outside).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

# The inputs and the warm schedule's price are pure, shared with the advisor's replay.
from ..core.advisor import (
    DAYS_PER_MONTH,
    MONTH_START,
    CostInputs,
    ScheduleCost,
    warm_schedule_cost,
)

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # deploy/: prices.json lives there
__all__ = [
    "DAYS_PER_MONTH",
    "MONTH_START",
    "PRESETS",
    "CostInputs",
    "CostReport",
    "ScheduleCost",
    "curve",
    "estimate",
    "inputs_from_preset",
    "load_presets",
    "wait_share",
    "warm_schedule_cost",
]

HOURS_PER_DAY = 24.0


@dataclass(frozen=True)
class CostReport:
    inputs: CostInputs
    always_on_monthly: float
    """GPU on 24 h a day (the integrated deployment: no wrapper)."""
    seed_autoscaled_monthly: float
    """The seed's formula: wrapper + GPU for the hours of use only."""
    autoscaled_monthly: float
    """Corrected: plus each wake's boot and idle tail."""
    wakes_per_day: float
    gpu_hours_per_day: float
    seed_saving: float
    saving: float
    break_even_hours_per_day: float | None
    """Hours of use a day above which always-on is cheaper (None: autoscale always wins)."""
    wait_share: float | None = None
    """Share of requests that wait for a boot (None: no request rate, one wake a day)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gpu_seconds_per_day(inputs: CostInputs, hours: float) -> tuple[float, float]:
    """(GPU seconds billed a day, wakes a day) for ``hours`` of use."""
    if hours <= 0:
        return 0.0, 0.0
    window, boot = inputs.scaledown_window, inputs.boot_seconds
    if not inputs.requests_per_hour:
        on = hours * 3600 + boot + window
        return min(on, HOURS_PER_DAY * 3600), 1.0
    rate = inputs.requests_per_hour / 3600  # per second
    n = inputs.requests_per_hour * hours
    stays_up = math.exp(-rate * window)  # chance the next gap outlasts the window
    wakes = 1 + n * stays_up
    on = n * (1 - stays_up) / rate + wakes * boot
    return min(on, HOURS_PER_DAY * 3600), wakes


def _monthly(inputs: CostInputs, hours: float) -> float:
    seconds, _ = _gpu_seconds_per_day(inputs, hours)
    gpu = inputs.gpu_price_per_hour * inputs.gpu_count * seconds / 3600
    wrapper = inputs.wrapper_price_per_hour * HOURS_PER_DAY
    return (gpu + wrapper) * inputs.days_per_month


def estimate(inputs: CostInputs) -> CostReport:
    gpu_hourly = inputs.gpu_price_per_hour * inputs.gpu_count
    always_on = gpu_hourly * HOURS_PER_DAY * inputs.days_per_month
    wrapper_monthly = inputs.wrapper_price_per_hour * HOURS_PER_DAY * inputs.days_per_month
    seed = wrapper_monthly + gpu_hourly * inputs.hours_per_day * inputs.days_per_month
    corrected = _monthly(inputs, inputs.hours_per_day)
    seconds, wakes = _gpu_seconds_per_day(inputs, inputs.hours_per_day)
    return CostReport(
        inputs=inputs,
        always_on_monthly=always_on,
        seed_autoscaled_monthly=seed,
        autoscaled_monthly=corrected,
        wakes_per_day=wakes,
        gpu_hours_per_day=seconds / 3600,
        seed_saving=1 - seed / always_on,
        saving=1 - corrected / always_on,
        break_even_hours_per_day=_break_even(inputs, always_on),
        wait_share=wait_share(inputs),
    )


def wait_share(inputs: CostInputs) -> float | None:
    """Poisson share of requests that wait for a boot (module docstring); None without a rate."""
    if not inputs.requests_per_hour:
        return None
    rate = inputs.requests_per_hour / 3600
    during_boot = rate * inputs.boot_seconds
    # exp overflows past ~709: the share is then 0 to any precision that matters.
    exponent = rate * inputs.scaledown_window
    if exponent > 700:
        return 0.0
    return (1 + during_boot) / (during_boot + math.exp(exponent))


def _break_even(inputs: CostInputs, always_on: float) -> float | None:
    if _monthly(inputs, HOURS_PER_DAY) < always_on:
        return None
    low, high = 0.0, HOURS_PER_DAY
    for _ in range(60):  # bisection: monthly cost grows with hours of use
        mid = (low + high) / 2
        low, high = (mid, high) if _monthly(inputs, mid) < always_on else (low, mid)
    return round(high, 3)


def curve(inputs: CostInputs, points: int = 49) -> list[dict[str, float]]:
    """Monthly cost of both modes against hours of use a day (for the plot)."""
    always_on = estimate(inputs).always_on_monthly
    out = []
    for i in range(points):
        hours = HOURS_PER_DAY * i / (points - 1)
        out.append(
            {"hours_per_day": hours, "autoscaled": _monthly(inputs, hours), "always_on": always_on}
        )
    return out


def load_presets(path: Path | None = None) -> dict[str, dict[str, Any]]:
    data = json.loads((path or PACKAGE_ROOT / "prices.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


PRESETS = load_presets()


def inputs_from_preset(name: str, **overrides: Any) -> CostInputs:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    fields = {k: v for k, v in PRESETS[name].items() if k != "description"}
    base = CostInputs(**fields)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
