"""``cost --traffic/--profile``: replay the traffic under each window, alone and with each warm
schedule (derived from the traffic's busy hours, and any given), recommend the cheapest
setting within the wait budget; as a table, JSON, or a plot of the cost / cold-wait
frontier."""

# ruff: noqa: T201 - a command's output is what it prints

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from ...core.warm_candidates import DEFAULT_THRESHOLDS, MIN_BUSY_DAYS, Candidate
from ..advisor import (
    DEFAULT_WINDOWS,
    SEED_WINDOW,
    Row,
    Search,
    recommend,
    search,
)
from ..cost import CostInputs, inputs_from_preset
from ..traffic import Trace, load_traffic, profile
from ._output import console, money
from .errors import need_extra

__all__ = ["advise"]


def _advisor_trace(args: argparse.Namespace) -> Trace:
    if args.traffic:
        if args.requests_per_hour is not None:
            raise ValueError("--requests-per-hour sets a --profile's rate, not a trace's")
        return load_traffic(args.traffic)
    rate = 40.0 if args.requests_per_hour is None else args.requests_per_hour
    return profile(args.profile, rate, seed=args.seed, zone=args.zone)


def advise(args: argparse.Namespace) -> int:
    """Replay the traffic under each setting, pick a window (or a warm schedule)."""
    share = args.max_wait_share
    try:
        if share is not None and not 0 <= share <= 1:
            raise ValueError(f"--max-wait-share is a fraction: 0.05 is 5%, not {share:g}")
        if args.max_mean_wait is not None and args.max_mean_wait < 0:
            raise ValueError("--max-mean-wait is seconds, 0 or more")
        inputs = inputs_from_preset(
            args.preset,
            gpu_price_per_hour=args.gpu_price,
            gpu_count=args.gpu_count,
            boot_seconds=args.boot_seconds,
            wrapper_price_per_hour=args.wrapper_price,
        )
        trace = _advisor_trace(args)
        windows = [*DEFAULT_WINDOWS, *([args.scaledown_window] * bool(args.scaledown_window))]
        found = search(
            trace,
            inputs,
            zone=args.zone,
            schedules=args.warm_schedule or [],
            windows=windows,
            max_wait_share=share,
            max_mean_wait=args.max_mean_wait,
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(_advice_json(args, trace, inputs, found), indent=2))
    else:
        _advice_table(args, trace, inputs, found)
    if args.plot:
        _plot_frontier(found, args.plot, trace, inputs, share, args.max_mean_wait)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _advice_json(args: argparse.Namespace, trace: Trace, inputs: CostInputs, found: Search) -> dict:
    prices = {k: v for k, v in asdict(inputs).items() if k not in ("hours_per_day",
              "requests_per_hour", "scaledown_window")}  # fmt: skip
    best = found.best
    return {
        "trace": {
            "name": trace.name,
            "requests": len(trace.times),
            "start": trace.start,
            "end": trace.end,
            "days": trace.days,
            "scaled_to_days": inputs.days_per_month,
        },
        "preset": args.preset,
        "prices": prices,
        "budget": {"max_wait_share": args.max_wait_share, "max_mean_wait": args.max_mean_wait},
        "derived": {
            "zone": found.zone,
            "thresholds": list(DEFAULT_THRESHOLDS),
            "min_busy_days": MIN_BUSY_DAYS,
            "schedules": [asdict(c) for c in found.candidates],
        },
        "schedules_tried": found.schedules,
        "rows": [r.to_dict() for r in found.rows],
        "recommended": {
            "label": best.row.label,
            "schedule": best.row.schedule,
            "window": best.row.window,
            "fits": best.fits,
            "reason": best.reason,
        },
    }


_VARIANTS = {"tight": "tight", "padded": "padded an hour", "weekdays": "weekdays only"}


def _advice_note(row: Row, found: Search, derived: dict[str, Candidate], mine: float | None) -> str:
    best = found.best
    notes = []
    if row is best.row:
        notes.append("<- recommended" if best.fits else "<- least waiting (none fits)")
    if row.schedule is None and row.window == SEED_WINDOW:
        notes.append("seed default")
    if row.schedule is None and mine is not None and row.window == mine:
        notes.append("yours")
    if row.schedule in derived:
        notes.append(f"derived {found.schedules.index(row.schedule) + 1}")
    return ", ".join(notes)


def _shown_rows(found: Search, share: float | None, mean: float | None) -> list[Row]:
    """Every row, but a derived schedule's only with its best window (as ``recommend``
    picks): the JSON has them all."""
    condensed = {c.schedule for c in found.candidates} - set(found.given)
    shown: list[Row] = []
    for schedule in [None, *found.schedules]:
        group = [r for r in found.rows if r.schedule == schedule and r.window is not None]
        if schedule in condensed and group:
            mine = [r for r in group if r is found.best.row]
            group = mine or [recommend(group, share, mean).row]
        shown += group
    return shown + [r for r in found.rows if r.window is None]


def _derived_lines(found: Search) -> list[str]:
    head = f"derived from the traffic (busy hours by weekday and hour, {found.zone})"
    least = f"{MIN_BUSY_DAYS} days and {min(DEFAULT_THRESHOLDS):.0%} of them"
    if not found.candidates:
        return [f"{head}: none: no weekly pattern of busy hours (requests on {least} or "
                "more) against quiet ones"]  # fmt: skip
    n = len(found.candidates)
    lines = [
        f"{head}: {n} schedule{'s' * (n > 1)}, each replayed with every window (the table "
        "shows its best, --json all); busy at 50%: requests in that hour on half its days "
        f"or more, {MIN_BUSY_DAYS} at least"
    ]
    for c in found.candidates:
        number = found.schedules.index(c.schedule) + 1
        lines.append(
            f"  {number}. {_VARIANTS[c.variant]}, busy at {c.threshold:.0%}, "
            f"{c.hours_per_week} h a week: {c.schedule}"
        )
    return lines


def _advice_table(
    args: argparse.Namespace, trace: Trace, inputs: CostInputs, found: Search
) -> None:
    from rich.table import Table  # noqa: PLC0415 - rich is slow to import; `status` draws no table

    out = console()
    best = found.best
    derived = {c.schedule: c for c in found.candidates}
    table = Table(
        title=f"{trace.name}: {len(trace.times):,} requests over {trace.days:.1f} days, "
        f"figures scaled to {inputs.days_per_month} days",
        caption=f"preset {args.preset}: GPU ${money(inputs.gpu_price_per_hour)}/h x "
        f"{inputs.gpu_count}, wrapper ${money(inputs.wrapper_price_per_hour)}/h, "
        f"boot {inputs.boot_seconds:g} s",
    )
    headers = ("setting", "USD/month", "GPU h/month", "cold starts/day", "requests waiting",
               "mean wait s", "p95 wait s", "")  # fmt: skip
    for n, header in enumerate(headers):
        number = 0 < n < len(headers) - 1
        table.add_column(header, justify="right" if number else "left", no_wrap=number)
    for row in _shown_rows(found, args.max_wait_share, args.max_mean_wait):
        table.add_row(
            row.label,
            money(row.monthly),
            f"{row.gpu_hours_month:,.1f}",
            f"{row.cold_starts_per_day:,.1f}",
            f"{row.wait_share:.1%}",
            f"{row.mean_wait:.1f}",
            f"{row.p95_wait:.0f}",
            _advice_note(row, found, derived, args.scaledown_window),
            style="bold green" if row is best.row else None,
        )
    out.print(table)
    for line in _derived_lines(found):
        out.print(line, highlight=False, soft_wrap=True)
    out.print(("recommended: " if best.fits else "no setting fits: ") + best.reason,
              highlight=False, soft_wrap=True)  # fmt: skip


def _short_label(row: Row, schedules: list[str]) -> str:
    if row.window is None:
        return "always on"
    if row.schedule is None:
        return f"{row.window:g} s"
    number = f" {schedules.index(row.schedule) + 1}" if len(schedules) > 1 else ""
    return f"warm{number} + {row.window:g} s"


def _plot_frontier(
    found: Search,
    path: str,
    trace: Trace,
    inputs: CostInputs,
    max_wait_share: float | None,
    max_mean_wait: float | None,
) -> None:
    """Monthly cost against waiting, one point per setting: the cost / cold-wait frontier."""
    need_extra("matplotlib", "plot", "`vllm-autoscale cost --plot`")
    import matplotlib  # noqa: PLC0415 - matplotlib is the 'plot' extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after use("Agg"): no display needed
    import matplotlib.ticker  # noqa: PLC0415 - matplotlib is the 'plot' extra

    rows, best = found.rows, found.best
    by_mean = max_mean_wait is not None and max_wait_share is None
    x_of = (lambda r: r.mean_wait) if by_mean else (lambda r: 100 * r.wait_share)
    schedules = found.schedules
    fig, ax = plt.subplots(figsize=(8, 5))
    for family in [None, *schedules]:
        group = [r for r in rows if r.schedule == family and r.window is not None]
        name = "scale to zero" if family is None else _legend_name(family, schedules)
        ax.plot([x_of(r) for r in group], [r.monthly for r in group], marker="o",
                markersize=4, linewidth=1, label=name)  # fmt: skip
    on = [r for r in rows if r.window is None]
    ax.scatter([x_of(r) for r in on], [r.monthly for r in on], marker="s", color="black",
               label="always on")  # fmt: skip
    ax.scatter([x_of(best.row)], [best.row.monthly], s=220, marker="*", color="crimson",
               zorder=4, label=f"recommended: {_short_label(best.row, schedules)}")  # fmt: skip
    budget = (
        max_mean_wait if by_mean and max_mean_wait is not None else 100 * (max_wait_share or 0.05)
    )
    ax.axvline(budget, color="crimson", linestyle=":",
               label=f"budget: {budget:g}{' s' if by_mean else '%'}")  # fmt: skip
    ax.set_xlabel("mean wait for a boot, s" if by_mean else "requests that wait for a boot, %")
    _frontier_axes(matplotlib.ticker, ax, budget)
    _label_points(ax, rows, best.row, x_of, schedules)
    ax.set_title(
        f"{trace.name}: {len(trace.times):,} requests over {trace.days:.1f} days\n"
        f"monthly cost vs cold waits (boot {inputs.boot_seconds:g} s)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _legend_name(schedule: str, schedules: list[str]) -> str:
    if len(schedules) == 1:
        return f"warm {schedule}"
    text = schedule if len(schedule) <= 40 else schedule[:39] + "…"
    return f"warm {schedules.index(schedule) + 1}: {text}"


def _frontier_axes(ticker: Any, ax: Any, budget: float) -> None:
    """Always on is often several times the rest, and the useful settings crowd near zero
    waiting: log cost, and an x axis linear up to the budget and logarithmic past it."""
    ax.set_ylabel("USD per month")
    ax.set_yscale("log")
    ax.set_xscale("symlog", linthresh=max(budget, 1e-3))
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.xaxis.set_major_formatter(ticker.StrMethodFormatter("{x:g}"))


def _label_points(ax: Any, rows: list[Row], best: Row, x_of: Any, schedules: list[str]) -> None:
    """Label each point, the recommended first, skipping labels that would overprint one."""
    ax.get_xlim(), ax.get_ylim()  # settle the autoscaled limits before reading positions
    placed: list[tuple[float, float]] = []
    for row in sorted(rows, key=lambda r: r is not best):
        x, y = ax.transData.transform((x_of(row), row.monthly))  # pixels
        if any(abs(x - px) < 45 and abs(y - py) < 10 for px, py in placed):
            continue
        placed.append((x, y))
        ax.annotate(_short_label(row, schedules), (x_of(row), row.monthly), xytext=(5, 4),
                    textcoords="offset points", fontsize=7)  # fmt: skip
