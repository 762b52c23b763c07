"""The window advisor finding warm schedules by itself: what the recommendation saves.

    python -m benchmarks.advisor [--out benchmarks/results] [--preset modal-a100-80gb]

No warm schedule is given: the advisor derives candidates from each traffic's busy hours
(weekday x hour, UTC; ``deploy/core/warm_candidates.py``) and replays each with every window
of ``deploy.ops.advisor.DEFAULT_WINDOWS``, beside the windows alone and always on (the same
search as ``vllm-autoscale cost --traffic FILE``). Traffic:

* weekday office-hours bursts: 30 days from a Monday, ten bursts of 5-13 requests on each
  weekday between 09:00 and 18:00 UTC (about 2,000 requests), written to a trace file and
  read back as ``--traffic`` reads it; the target: a schedule recommended at 30% of always
  on or less, with 5% of requests waiting at most;
* the shipped office-hours profile (40 requests/h, weekdays 09:00-18:00 UTC, seed 0);
* traffic without a weekly pattern, which should get no schedule: uniform, bursty, thin
  uniform, and sparse.

Reports the recommended setting, the best window without a schedule, the seed's 120 s
window and always on, with the monthly cost against always on and the share of requests
that wait for a boot (5% budget). Writes ``advisor.json`` and ``advisor.md``.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.run import save
from deploy.ops import advisor
from deploy.ops.cost import MONTH_START, CostInputs, inputs_from_preset

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 0.05
TARGET_SHARE_OF_ALWAYS_ON = 0.30
DAY = 86400.0
HOUR = 3600.0


def office_bursts(seed: int = 0) -> list[float]:
    """30 days from ``MONTH_START`` (a Monday): on weekdays, ten bursts at random times
    between 09:00 and 17:50 UTC, each of 5 to 13 requests some 30 s apart."""
    rng = random.Random(f"office-bursts:{seed}")
    times: list[float] = []
    for day in range(30):
        if day % 7 >= 5:
            continue
        for _ in range(10):
            at = MONTH_START + day * DAY + 9 * HOUR + rng.uniform(0, 9 * HOUR - 600)
            for _ in range(rng.randint(5, 13)):
                at += rng.expovariate(1 / 30)
                times.append(at)
    return sorted(times)


def _through_a_file(times: list[float], folder: Path) -> advisor.Trace:
    path = folder / "office-bursts.csv"
    iso = (datetime.fromtimestamp(t, timezone.utc).isoformat() for t in times)
    path.write_text("timestamp\n" + "\n".join(iso) + "\n")
    return advisor.load_traffic(path)


def _sparse(seed: int = 0) -> advisor.Trace:
    rng = random.Random(f"sparse:{seed}")
    start = MONTH_START
    times = [start + rng.uniform(0, 30 * DAY) for _ in range(25)]
    return advisor.Trace(tuple(sorted(times)), start, start + 30 * DAY, "sparse (25 requests)")


def _figures(row: advisor.Row, always: advisor.Row) -> dict[str, Any]:
    return {
        "setting": row.label,
        "schedule": row.schedule,
        "monthly_usd": row.monthly,
        "of_always_on": round(row.monthly / always.monthly, 4),
        "gpu_hours_month": round(row.gpu_hours_month, 1),
        "wait_share": round(row.wait_share, 4),
        "mean_wait_s": round(row.mean_wait, 2),
        "p95_wait_s": row.p95_wait,
        "cold_starts_per_day": round(row.cold_starts_per_day, 2),
    }


def _search(trace: advisor.Trace, inputs: CostInputs) -> dict[str, Any]:
    started = time.perf_counter()
    found = advisor.search(trace, inputs, max_wait_share=BUDGET)
    elapsed = time.perf_counter() - started
    rows, best = found.rows, found.best
    always = next(r for r in rows if r.window is None)
    windows_only = advisor.recommend([r for r in rows if r.schedule is None and r.window])
    seed = next(r for r in rows if r.schedule is None and r.window == advisor.SEED_WINDOW)
    return {
        "traffic": trace.name,
        "requests": len(trace.times),
        "days": round(trace.days, 2),
        "derived": [asdict(c) for c in found.candidates],
        "settings_tried": len(rows),
        "search_seconds": round(elapsed, 3),
        "recommended": {**_figures(best.row, always), "fits": best.fits, "reason": best.reason},
        "best_window_without_schedule": {
            **_figures(windows_only.row, always),
            "fits": windows_only.fits,
        },
        "seed_120s": _figures(seed, always),
        "always_on": _figures(always, always),
    }


def run(preset: str) -> dict[str, Any]:
    inputs = inputs_from_preset(preset)
    with tempfile.TemporaryDirectory() as folder:
        bursts = _search(_through_a_file(office_bursts(), Path(folder)), inputs)
    best = bursts["recommended"]
    bursts["target_met"] = bool(
        best["schedule"]
        and best["of_always_on"] <= TARGET_SHARE_OF_ALWAYS_ON
        and best["wait_share"] <= BUDGET
    )
    others = [
        advisor.profile("uniform", requests_per_hour=5),
        advisor.profile("bursty", requests_per_hour=40),
        advisor.profile("uniform", requests_per_hour=0.5),
        _sparse(),
    ]
    return {
        "preset": preset,
        "boot_seconds": inputs.boot_seconds,
        "gpu_price_per_hour": inputs.gpu_price_per_hour,
        "budget_wait_share": BUDGET,
        "target_share_of_always_on": TARGET_SHARE_OF_ALWAYS_ON,
        "office_bursts": bursts,
        "office_hours_profile": _search(advisor.profile("office-hours", 40.0, seed=0), inputs),
        "without_a_pattern": [_search(trace, inputs) for trace in others],
    }


def _section(title: str, r: dict[str, Any]) -> list[str]:
    n = len(r["derived"])
    lines = [
        f"## {title}: {r['traffic']}, {r['requests']:,} requests over {r['days']:.1f} days",
        "",
        f"Derived from the traffic: {n} schedule{'s' * (n != 1)}; {r['settings_tried']} "
        f"settings replayed in {r['search_seconds']:.2f} s.",
        "",
        "| # | variant | busy at | hours a week | schedule |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k, c in enumerate(r["derived"], 1):
        lines.append(
            f"| {k} | {c['variant']} | {c['threshold']:.0%} | {c['hours_per_week']} | "
            f"`{c['schedule']}` |"
        )
    lines += [
        "",
        "| | setting | USD/month | of always on | GPU h/month | requests waiting "
        "| mean wait (s) | p95 wait (s) | cold starts/day |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    alone = "best window, no schedule"
    if not r["best_window_without_schedule"]["fits"]:
        alone = "least waiting window, no schedule (none fits)"
    for key, name in (
        ("recommended", "recommended"),
        ("best_window_without_schedule", alone),
        ("seed_120s", "seed's 120 s"),
        ("always_on", "always on"),
    ):
        f = r[key]
        lines.append(
            f"| {name} | {f['setting']} | {f['monthly_usd']:,.2f} | {f['of_always_on']:.1%} | "
            f"{f['gpu_hours_month']:,.1f} | {f['wait_share']:.1%} | {f['mean_wait_s']:.1f} | "
            f"{f['p95_wait_s']:.0f} | {f['cold_starts_per_day']:.1f} |"
        )
    lines += ["", f"Recommendation: {r['recommended']['reason']}", ""]
    return lines


def markdown(r: dict[str, Any]) -> str:
    bursts = r["office_bursts"]
    best = bursts["recommended"]
    verdict = "met" if bursts["target_met"] else "NOT met"
    lines = [
        "# Window advisor: warm schedules derived from the traffic",
        "",
        f"Preset `{r['preset']}` (GPU ${r['gpu_price_per_hour']:.2f}/h, boot "
        f"{r['boot_seconds']:g} s); budget: at most {r['budget_wait_share']:.0%} of requests "
        "wait. No `--warm-schedule` given: every schedule was derived from the traffic itself "
        "(busy hours by weekday and hour, UTC).",
        "",
        f"Target on weekday office-hours bursts (a schedule at "
        f"{r['target_share_of_always_on']:.0%} of always on or less, "
        f"{r['budget_wait_share']:.0%} waiting at most): **{verdict}**: "
        f"`{best['schedule']}` with {best['setting'].rsplit(', else ', 1)[-1]} outside it, "
        f"{best['of_always_on']:.1%} of always on, {best['wait_share']:.1%} waiting "
        f"(mean {best['mean_wait_s']:.1f} s).",
        "",
    ]
    lines += _section("Weekday office-hours bursts (a trace file)", bursts)
    lines += _section("The office-hours profile", r["office_hours_profile"])
    lines += [
        "## Traffic without a weekly pattern",
        "",
        "| traffic | requests | schedules derived | recommended | of always on "
        "| requests waiting |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for o in r["without_a_pattern"]:
        f = o["recommended"]
        lines.append(
            f"| {o['traffic']} | {o['requests']:,} | {len(o['derived'])} | {f['setting']} | "
            f"{f['of_always_on']:.1%} | {f['wait_share']:.1%} |"
        )
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
