"""The window advisor on the shipped office-hours profile: what the recommendation saves.

    python -m benchmarks.advisor [--out benchmarks/results] [--preset modal-a100-80gb]

A month of office-hours traffic (40 requests/h, weekdays 09:00-18:00 UTC, seed 0) replayed
under every window of ``deploy.ops.advisor.DEFAULT_WINDOWS``, the matching warm schedule with
each of them, and always on (the same sweep as ``vllm-autoscale cost --profile
office-hours``). Reports the monthly cost and the share of requests that wait for a boot
at the recommended setting (5% budget), at the best window without a schedule, at the
seed's 120 s window and always on. Writes ``advisor.json`` and ``advisor.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.run import save
from deploy.ops import advisor
from deploy.ops.cost import inputs_from_preset

ROOT = Path(__file__).resolve().parent.parent
RATE = 40.0
BUDGET = 0.05


def _figures(row: advisor.Row) -> dict[str, Any]:
    return {
        "setting": row.label,
        "monthly_usd": row.monthly,
        "gpu_hours_month": round(row.gpu_hours_month, 1),
        "wait_share": round(row.wait_share, 4),
        "mean_wait_s": round(row.mean_wait, 2),
        "p95_wait_s": row.p95_wait,
        "cold_starts_per_day": round(row.cold_starts_per_day, 2),
    }


def run(preset: str) -> dict[str, Any]:
    inputs = inputs_from_preset(preset)
    trace = advisor.profile("office-hours", requests_per_hour=RATE, seed=0)
    started = time.perf_counter()
    rows = advisor.sweep(trace, inputs, schedules=[advisor.office_hours_schedule()])
    elapsed = time.perf_counter() - started
    best = advisor.recommend(rows, max_wait_share=BUDGET)
    windows_only = advisor.recommend([r for r in rows if r.schedule is None and r.window])
    seed = next(r for r in rows if r.schedule is None and r.window == advisor.SEED_WINDOW)
    always = next(r for r in rows if r.window is None)
    return {
        "profile": trace.name,
        "requests": len(trace.times),
        "days": trace.days,
        "preset": preset,
        "boot_seconds": inputs.boot_seconds,
        "gpu_price_per_hour": inputs.gpu_price_per_hour,
        "budget_wait_share": BUDGET,
        "settings_tried": len(rows),
        "sweep_seconds": round(elapsed, 3),
        "recommended": {**_figures(best.row), "reason": best.reason},
        "best_window_without_schedule": {
            **_figures(windows_only.row),
            "fits": windows_only.fits,
        },
        "seed_120s": _figures(seed),
        "always_on": _figures(always),
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Window advisor: {r['profile']}, {r['requests']:,} requests over {r['days']:.0f} days",
        "",
        f"Preset `{r['preset']}` (GPU ${r['gpu_price_per_hour']:.2f}/h, boot "
        f"{r['boot_seconds']:g} s); budget: at most {r['budget_wait_share']:.0%} of requests "
        f"wait; {r['settings_tried']} settings replayed in {r['sweep_seconds']:.2f} s.",
        "",
        "| | setting | USD/month | GPU h/month | requests waiting | mean wait (s) | p95 wait (s) | cold starts/day |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, name in (
        ("recommended", "recommended"),
        ("best_window_without_schedule", "best window, no schedule"),
        ("seed_120s", "seed's 120 s"),
        ("always_on", "always on"),
    ):
        f = r[key]
        lines.append(
            f"| {name} | {f['setting']} | {f['monthly_usd']:,.2f} | {f['gpu_hours_month']:,.1f} | "
            f"{f['wait_share']:.1%} | {f['mean_wait_s']:.1f} | {f['p95_wait_s']:.0f} | "
            f"{f['cold_starts_per_day']:.1f} |"
        )
    lines += ["", f"Recommendation: {r['recommended']['reason']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--preset", default="modal-a100-80gb")
    args = parser.parse_args(argv)
    result = run(args.preset)
    save(args.out, "advisor", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
