"""What the commands share to write and to read: rich tables on stdout, numbers in them, and
argparse's types for counts, amounts and days.

rich is imported where a table is drawn, not here: ``vllm-autoscale status`` starts without it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["_amount", "_count", "_day", "console", "money", "number", "table"]


def console() -> Any:
    """Rich's console on stdout; piped, wide enough that no table cell is cut."""
    from rich.console import Console  # noqa: PLC0415 - rich is slow to import; `status` draws no table

    return Console() if sys.stdout.isatty() else Console(width=200)


def table(
    title: str,
    headers: Sequence[str],
    rows: list[list[str]],
    *,
    text_columns: int,
    totals: list[str] | None = None,
    caption: str | None = None,
) -> None:
    """A rich table: the first ``text_columns`` columns left, the numbers right and whole."""
    from rich.table import Table  # noqa: PLC0415 - rich is slow to import; `status` draws no table

    drawn = Table(title=title, caption=caption)
    for i, header in enumerate(headers):
        is_number = i >= text_columns
        drawn.add_column(header, justify="right" if is_number else "left", no_wrap=is_number)
    for row in rows:
        drawn.add_row(*row)
    if totals is not None:
        drawn.add_section()
        drawn.add_row(*totals, style="bold")
    console().print(drawn)


def number(value: Any, places: int | None = None) -> str:
    """A table cell: ``-`` for none, thousands separated, ``places`` decimals if given."""
    if value is None:
        return "-"
    return f"{value:,.{places}f}" if places is not None else f"{value:,}"


def money(value: Any) -> str:
    """An amount of USD with the precision it needs: two decimals from $1 up; below, three
    significant digits (at least two decimals), so that a $0.002 budget is not "0.00"."""
    if value is None:
        return "-"
    amount = float(value)
    if amount == 0 or abs(amount) >= 1 or not math.isfinite(amount):
        return f"{amount:,.2f}"
    places = max(2, 2 - math.floor(math.log10(abs(amount))))
    whole, _, decimals = f"{amount:.{places}f}".partition(".")
    # Zeros past the second decimal say nothing: 0.00200 is 0.002.
    return f"{whole}.{decimals.rstrip('0').ljust(2, '0')}"


# argparse's types. Their names stay underscored: argparse quotes a type's name when the
# text is not even a number ("argument --rpm: invalid _count value: 'x'").


def _count(text: str) -> int:
    """A whole number, 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is below 0")
    return value


def _amount(text: str) -> float:
    """A finite amount, 0 or more."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} is not an amount >= 0")
    return value


def _day(text: str) -> str:
    """A date, YYYY-MM-DD."""
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date, YYYY-MM-DD") from None
