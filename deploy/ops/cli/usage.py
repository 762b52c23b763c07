"""``usage``: the wrapper's ledger, per day, key and model, as a table (or its JSON)."""

# ruff: noqa: T201 - a command's output is what it prints

from __future__ import annotations

import argparse
import json
from typing import Any

from ._output import number, table
from .remote import call

__all__ = ["USAGE_COLUMNS", "usage"]

# (header, the ledger's field, decimal places or None for a whole number)
USAGE_COLUMNS = (
    ("requests", "requests", None),
    ("cache hits", "cache_hits", None),
    ("prompt tok", "prompt_tokens", None),
    ("completion tok", "completion_tokens", None),
    ("cached tok", "cached_tokens", None),
    ("GPU s", "gpu_seconds", 1),
    ("cold starts", "cold_starts", None),
    ("cost USD", "cost_usd", 4),
)


def _usage_numbers(counters: dict[str, Any]) -> list[str]:
    return [number(counters.get(field), places) for _, field, places in USAGE_COLUMNS]


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
    )
    return 0
