"""``cost``: the monthly cost of always on against scaled to zero for hours of use a day, and
its plot; with ``--traffic`` or ``--profile``, the window advisor (advise.py) instead."""

# ruff: noqa: T201 - a command's output is what it prints

from __future__ import annotations

import argparse
import json
import sys

from ...settings.config_file import load_settings
from ..cost import PRESETS, CostInputs, CostReport, curve, estimate, inputs_from_preset
from ._output import money
from .advise import advise
from .errors import CliError, need_extra

__all__ = ["cost"]


def _inputs(args: argparse.Namespace) -> CostInputs:
    return inputs_from_preset(
        args.preset,
        hours_per_day=args.hours,
        requests_per_hour=args.requests_per_hour,
        gpu_price_per_hour=args.gpu_price,
        gpu_count=args.gpu_count,
        scaledown_window=args.scaledown_window,
        boot_seconds=args.boot_seconds,
        wrapper_price_per_hour=args.wrapper_price,
    )


def _from_settings(args: argparse.Namespace) -> None:
    """The window and GPU price the settings file (or a ``VLLM_*`` variable) sets, where no
    flag does: the cost of what would be deployed."""
    try:
        loaded = load_settings(args.config)
    except ValueError as exc:
        raise CliError(f"bad settings: {exc}") from None
    pairs = (("scaledown_window", "scaledown_window"), ("gpu_price", "gpu_price_per_hour"))
    for flag, name in pairs:
        if getattr(args, flag) is None and loaded.sources[name] != "default":
            setattr(args, flag, getattr(loaded.settings, name))


def cost(args: argparse.Namespace) -> int:
    _from_settings(args)
    if args.traffic or args.profile:
        return advise(args)
    advisor_only = (args.max_wait_share, args.max_mean_wait, args.warm_schedule)
    if any(a is not None for a in advisor_only):
        print("error: the wait budget and --warm-schedule need --traffic or --profile",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        inputs = _inputs(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = estimate(inputs)
    if args.json:
        print(json.dumps({"preset": args.preset, **report.to_dict()}, indent=2))
    else:
        _print_report(args.preset, report)
    if args.plot:
        _plot_cost(curve(inputs), args.plot, args.preset, report)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _print_report(preset: str, report: CostReport) -> None:
    i = report.inputs
    even = report.break_even_hours_per_day
    print(f"preset {preset}: {PRESETS[preset]['description']}")
    print(
        f"  GPU ${money(i.gpu_price_per_hour)}/h x {i.gpu_count}, {i.hours_per_day:g} h/day of use"
        + (f" at {i.requests_per_hour:g} requests/h" if i.requests_per_hour else "")
        + f", window {i.scaledown_window:g} s, boot {i.boot_seconds:g} s"
    )
    print(f"  always on                      ${money(report.always_on_monthly):>10}/month")
    print(
        f"  autoscaled, seed's formula     ${money(report.seed_autoscaled_monthly):>10}/month"
        f"   saving {report.seed_saving:.1%}"
    )
    print(
        f"  autoscaled, with boots + tails ${money(report.autoscaled_monthly):>10}/month"
        f"   saving {report.saving:.1%}"
    )
    gpu_hours, wakes = report.gpu_hours_per_day, report.wakes_per_day
    print(f"  GPU billed {gpu_hours:.2f} h/day over {wakes:.1f} wakes")
    print(f"  {_wait_line(report.wait_share, i.boot_seconds)}")
    if even is not None:
        print(f"  break-even: always-on is cheaper above {even:.2f} h/day of use")
    else:
        print("  break-even: none, autoscaling is cheaper at any hours of use")
    print(
        "  which window is cheapest for your traffic, and how often it waits: "
        "vllm-autoscale cost --traffic LOG (or --profile office-hours)"
    )


def _wait_line(share: float | None, boot: float) -> str:
    if share is None:
        return f"one wake a day: the day's first request waits for the boot ({boot:g} s)"
    return (
        f"{share:.0%} of requests wait for a boot (up to {boot:g} s): each wake's first "
        "request and those arriving during its boot (Poisson arrivals)"
    )


def _plot_cost(points: list[dict[str, float]], path: str, preset: str, report: CostReport) -> None:
    need_extra("matplotlib", "plot", "`vllm-autoscale cost --plot`")
    import matplotlib  # noqa: PLC0415 - matplotlib is the 'plot' extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after use("Agg"): no display needed

    i = report.inputs
    fig, ax = plt.subplots(figsize=(7, 4.2))
    hours = [p["hours_per_day"] for p in points]
    ax.plot(hours, [p["autoscaled"] for p in points], label="autoscaled (boots + idle tails)")
    ax.plot(hours, [p["always_on"] for p in points], label="always on", linestyle="--")
    # The user's own input, so the curve answers "and where am I on it?"
    mine = f"you: {i.hours_per_day:g} h/day, ${report.autoscaled_monthly:,.0f}/month"
    if report.wait_share is not None:
        mine += f"\n{report.wait_share:.0%} of requests wait for a boot"
    ax.scatter([i.hours_per_day], [report.autoscaled_monthly], color="crimson", zorder=3)
    ax.annotate(mine, (i.hours_per_day, report.autoscaled_monthly), xytext=(0.04, 0.62),
                textcoords="axes fraction", fontsize=8, color="crimson",
                arrowprops={"arrowstyle": "->", "color": "crimson"})  # fmt: skip
    ax.set_xlabel("hours of use per day")
    ax.set_ylabel("USD per month")
    rate = f"{i.requests_per_hour:g} requests/h, " if i.requests_per_hour else ""
    ax.set_title(
        f"Monthly cost ({preset}): {rate}window {i.scaledown_window:g} s, "
        f"boot {i.boot_seconds:g} s",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
