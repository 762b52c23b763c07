"""The window advisor's replay: which ``scaledown_window`` (or warm schedule) is cheapest for
a trace of request arrivals, and how often its users wait for a boot.

Pure (no file, no clock, nothing of the project outside ``core``), so that the wrapper's
``GET /v1/gpu/advice`` replays the traffic it recorded with the same code as the operator's
``vllm-autoscale cost --traffic`` (``deploy/ops/advisor.py``: presets, traces, profiles).

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
  month from a Monday by ``warm_schedule_cost``, so that a short trace does not stand
  for a whole month of windows.
* "always on": the GPU on for the whole span, nobody waits.

Waits reported per setting: the share of requests that waited at all, the mean wait over all
requests and over those that waited, and the 95th percentile (nearest rank) of all waits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from .schedule import WarmSchedule

__all__ = [
    "DAY",
    "DAYS_PER_MONTH",
    "DEFAULT_MAX_WAIT_SHARE",
    "DEFAULT_WINDOWS",
    "MONTH_START",
    "CostInputs",
    "Recommendation",
    "Row",
    "ScheduleCost",
    "Trace",
    "recommend",
    "simulate",
    "simulate_always_on",
    "sweep",
    "warm_schedule_cost",
]

DAY = 86400.0
DAYS_PER_MONTH = 30
MONTH_START = 1704067200.0
"""2024-01-01 00:00 UTC, a Monday: where a schedule's month is counted from, so that a
weekday schedule always gets the same weekdays (22 of them) and the same price."""
DEFAULT_WINDOWS = (30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
DEFAULT_MAX_WAIT_SHARE = 0.05


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
class CostInputs:
    """Prices, window and boot; ``hours_per_day`` and ``requests_per_hour`` are the Poisson
    cost model's (``deploy/ops/cost.py``), which the replay does not read."""

    gpu_price_per_hour: float
    """Per GPU."""
    gpu_count: int = 1
    hours_per_day: float = 2.0
    """Hours a day during which requests arrive."""
    requests_per_hour: float | None = None
    """Request rate during those hours; None: one continuous block of use a day."""
    scaledown_window: float = 120.0
    boot_seconds: float = 90.0
    wrapper_price_per_hour: float = 0.0
    days_per_month: int = DAYS_PER_MONTH


@dataclass(frozen=True)
class ScheduleCost:
    open_hours_per_month: float
    monthly: float
    """USD a month for the GPU kept warm in the windows (the wrapper not included)."""


def warm_schedule_cost(
    schedule: WarmSchedule,
    gpu_price_per_hour: float,
    gpu_count: int = 1,
    days: int = DAYS_PER_MONTH,
) -> ScheduleCost:
    """What keeping one GPU container warm in ``schedule``'s windows costs a month: the open
    seconds over ``days`` days from ``MONTH_START`` (a Monday), at the GPU's price."""
    seconds = sum(b - a for a, b in schedule.open_spans(MONTH_START, MONTH_START + days * DAY))
    hours = seconds / 3600
    return ScheduleCost(hours, hours * gpu_price_per_hour * gpu_count)


# -- a setting's figures -------------------------------------------------------------------


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


@dataclass(frozen=True)
class _Warm:
    """A schedule as the replay needs it, found once for every window it is tried with."""

    schedule: WarmSchedule | None
    spans: list[tuple[float, float]]
    """Its open stretches within the trace."""
    month_seconds: float
    """Its open seconds in a month from ``MONTH_START``."""

    @classmethod
    def of(cls, schedule: WarmSchedule | None, trace: Trace, days: int) -> _Warm:
        if not schedule:
            return cls(None, [], 0.0)
        spans = schedule.open_spans(trace.start, trace.end)
        month = warm_schedule_cost(schedule, 0.0, days=days).open_hours_per_month * 3600
        return cls(schedule, spans, month)


def _simulate(trace: Trace, inputs: CostInputs, warm: _Warm, service_seconds: float) -> Row:
    window, boot = inputs.scaledown_window, inputs.boot_seconds
    waits, cold, billed = _replay(trace, window, boot, service_seconds, warm.spans)
    scale = inputs.days_per_month * DAY / trace.span
    # Outside the windows the trace's own GPU time, scaled; the windows, a whole month's.
    in_windows = sum(b - a for a, b in warm.spans)
    month = (billed - in_windows) * scale + warm.month_seconds
    schedule = warm.schedule
    text = "; ".join(str(w) for w in schedule.windows) if schedule else None
    label = _label(window, schedule)
    return _row(trace, inputs, label, waits, cold, month, billed, window, text)


def simulate(
    trace: Trace,
    inputs: CostInputs,
    schedule: WarmSchedule | str | None = None,
    service_seconds: float = 0.0,
) -> Row:
    """One setting: ``inputs.scaledown_window`` and ``inputs.boot_seconds``, scaled to zero
    outside ``schedule``'s windows (module docstring)."""
    warm = _Warm.of(_as_schedule(schedule), trace, inputs.days_per_month)
    return _simulate(trace, inputs, warm, service_seconds)


def simulate_always_on(trace: Trace, inputs: CostInputs) -> Row:
    month = inputs.days_per_month * DAY
    waits = [0.0] * len(trace.times)
    return _row(trace, inputs, "always on", waits, 0, month, trace.span, None, None)


def sweep(
    trace: Trace | Iterable[float],
    inputs: CostInputs,
    windows: Iterable[float] = DEFAULT_WINDOWS,
    schedules: Iterable[WarmSchedule | str] = (),
    always_on: bool = True,
    service_seconds: float = 0.0,
) -> list[Row]:
    """Every window, then every schedule with every window outside it, then always on.
    ``inputs`` gives the prices and the boot."""
    if not isinstance(trace, Trace):
        trace = Trace.of(trace)
    windows = sorted(set(float(w) for w in windows))
    rows = []
    for schedule in [None, *(_as_schedule(s) for s in schedules)]:
        warm = _Warm.of(schedule, trace, inputs.days_per_month)
        for w in windows:
            setting = replace(inputs, scaledown_window=w)
            rows.append(_simulate(trace, setting, warm, service_seconds))
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
