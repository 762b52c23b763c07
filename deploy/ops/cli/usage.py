"""``usage``: the wrapper's ledger, per day, key and model, as a table (or its JSON)."""

# ruff: noqa: T201 - a command's output is what it prints

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from functools import partial
from typing import Any

from ._output import money, number, table
from .errors import CliError
from .remote import call

__all__ = ["USAGE_COLUMNS", "usage"]

# (header, the ledger's field, how a value is written)
USAGE_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("requests", "requests", number),
    ("cache hits", "cache_hits", number),
    ("prompt tok", "prompt_tokens", number),
    ("completion tok", "completion_tokens", number),
    ("cached tok", "cached_tokens", number),
    # The GPU's up-time allocated to the row (docs/gateway.md, "The bill"), and its parts.
    ("GPU s", "gpu_seconds", partial(number, places=1)),
    ("busy s", "busy_seconds", partial(number, places=1)),
    ("boot s", "boot_seconds", partial(number, places=1)),
    ("idle s", "idle_seconds", partial(number, places=1)),
    ("cold starts", "cold_starts", number),
    ("cost USD", "cost_usd", money),
)


def _usage_numbers(counters: dict[str, Any]) -> list[str]:
    return [show(counters.get(field)) for _, field, show in USAGE_COLUMNS]


def usage(args: argparse.Namespace) -> int:
    params = {"start": args.start, "end": args.end, "key": args.key}
    answer = call(args, "GET", "/v1/usage", params=params)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    title = (
        f"usage of {answer.get('key') or 'every key'}, from {answer.get('start') or 'the start'} "
        f"to {answer.get('end') or 'today'} (UTC)"
    )
    rows = [[r["date"], r["key"], r["model"], *_usage_numbers(r)] for r in answer["data"]]
    table(
        title,
        ["date", "key", "model", *(header for header, _, _ in USAGE_COLUMNS)],
        rows,
        text_columns=3,
        totals=["total", "", "", *_usage_numbers(answer.get("totals", {}))],
        caption=_gpu_caption(args),
    )
    return 0


def _gpu_caption(args: argparse.Namespace) -> str | None:
    """This month's GPU bill against always-on, per model (admin keys; others: nothing)."""
    try:
        gpu = call(args, "GET", "/v1/gpu")
    except CliError:  # not an admin key, or an older wrapper
        return None
    lines = []
    for name, figures in (gpu.get("models") or {}).items():
        month = figures.get("month") or {}
        seconds = {k: number(month.get(k), places=0) for k in ("up_s", "boot_s", "idle_s")}
        lines.append(
            f"{name} this month: GPU up {seconds['up_s']} s, {money(month.get('cost_usd'))} USD "
            f"(boot {seconds['boot_s']} s, idle {seconds['idle_s']} s; unallocated "
            f"{money(month.get('unallocated_usd'))}); always on: "
            f"{money(month.get('always_on_usd'))} USD"
        )
    return "\n".join(lines) or None
