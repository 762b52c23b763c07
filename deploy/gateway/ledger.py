"""The usage ledger: per key, model and UTC day, what was served and what it cost.

Each wrapper (one process locally, one container on Modal) is a *writer* with its own rows:
it adds requests up in memory and writes its rows whole to the state store at every sync and
when it stops. No row has two writers, so the store needs no atomic increments and a lost
race cannot lose a count; readers add the writers' rows up. A wrapper killed without a
shutdown loses at most one sync interval of counts; a restart loses nothing.

A monthly budget compares the key's month-to-date cost, all writers together, to its cap.
"""

from __future__ import annotations

import calendar
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any

from .store import StateStore

__all__ = ["Ledger", "UsageRow", "seconds_to_next_month", "total"]

COUNTERS = (
    "requests",
    "cache_hits",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "gpu_seconds",
    "cold_starts",
    "cost_usd",
    "estimated",
    "engine_seconds",
    "busy_seconds",
    "boot_seconds",
    "idle_seconds",
)


@dataclass
class UsageRow:
    """One key's use of one model on one day. Cache hits count apart: ``requests`` and the
    token and cost columns are what the engine served; ``cache_hits`` and ``cached_tokens``
    what the cache answered (no GPU)."""

    date: str
    key: str
    model: str
    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    gpu_seconds: float = 0.0
    cold_starts: int = 0
    cost_usd: float = 0.0
    estimated: int = 0
    """Of ``requests``, those whose tokens the wrapper counted itself (a stream dropped or
    failed before the engine's usage chunk, or a fallback that sent none)."""
    # As ``GET /v1/usage`` reports a row (see Gateway.usage): ``gpu_seconds`` and ``cost_usd``
    # are then the GPU's up-time allocated to the row (busy + boot + idle), and
    # ``engine_seconds`` the requests' own engine time. Stored rows keep the requests' own
    # seconds and cost in ``gpu_seconds`` and ``cost_usd``.
    engine_seconds: float = 0.0
    busy_seconds: float = 0.0
    boot_seconds: float = 0.0
    idle_seconds: float = 0.0
    provisional: bool = False
    """Its allocation draws on a container still up: it grows until that one stops."""

    def add(self, other: UsageRow | dict[str, Any]) -> None:
        get = other.get if isinstance(other, dict) else lambda n, d=0: getattr(other, n)
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + (get(name, 0) or 0))
        self.provisional = self.provisional or bool(get("provisional", False))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("gpu_seconds", "engine_seconds", "busy_seconds", "boot_seconds",
                     "idle_seconds"):  # fmt: skip
            data[name] = round(data[name], 4)
        data["cost_usd"] = round(data["cost_usd"], 8)
        return data


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def seconds_to_next_month(now: float) -> float:
    day = _utc(now)
    days = calendar.monthrange(day.year, day.month)[1]
    start = day.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start.timestamp() + days * 86400 - now


class Ledger:
    def __init__(self, store: StateStore, writer: str, clock: Callable[[], float] = time.time):
        self.store, self.writer, self.clock = store, writer, clock
        self._rows: dict[tuple[str, str, str], UsageRow] = {}
        self._dirty: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()  # record() runs on the loop, flush() in a thread
        self._today = ("", 0.0, 0.0)  # (date, its start, its end)
        self._spend: dict[tuple[str, str], float] = {}  # (month, key): this writer's cost
        self._peer_spend: dict[str, float] = {}
        self._peer_month = ""
        self._allocated: tuple[str, dict[str, float], dict[str, float]] | None = None
        """(month, each key's allocated cost, this writer's own spend then): see month_spend."""
        self.spend_known = False
        """Whether other writers' spend was read once: a budget is not checked blind."""

    def record(
        self,
        key: str,
        model: str,
        usage: dict[str, Any] | None,
        *,
        gpu_seconds: float = 0.0,
        cold_start: bool = False,
        cost_usd: float = 0.0,
        cache_hit: bool = False,
        requests: int = 1,
        estimated: bool = False,
    ) -> None:
        usage = usage or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        day = self._day()
        ident = (day, key, model)
        with self._lock:
            row = self._rows.get(ident)
            if row is None:
                row = self._rows[ident] = UsageRow(day, key, model)
            if cache_hit:
                row.cache_hits += 1
                row.cached_tokens += prompt + completion
            else:
                row.requests += requests
                row.prompt_tokens += prompt
                row.completion_tokens += completion
                row.gpu_seconds += gpu_seconds
                row.cold_starts += int(cold_start)
                row.cost_usd += cost_usd
                row.estimated += requests if estimated else 0
                spent = (day[:7], key)
                self._spend[spent] = self._spend.get(spent, 0.0) + cost_usd
            self._dirty.add(ident)

    # -- budgets --------------------------------------------------------------------------------

    def _day(self) -> str:
        """Today (UTC), formatted once a day rather than once a request."""
        now = self.clock()
        if not self._today[1] <= now < self._today[2]:
            start = _utc(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
            self._today = (_utc(now).strftime("%Y-%m-%d"), start, start + 86400)
        return self._today[0]

    def _month(self) -> str:
        return self._day()[:7]

    def _own_spend(self, month: str) -> dict[str, float]:
        return {key: usd for (m, key), usd in list(self._spend.items()) if m == month}

    def month_spend(self, key: str) -> float:
        """The key's cost this UTC month, every writer's (others' as of the last refresh):
        the GPU up-time allocated to it (its share of boot, busy and idle, the tail its
        requests will cause included) plus what it was booked since that allocation, or the
        requests' own cost if that is more (a transport that reports no containers)."""
        month = self._month()
        peers = self._peer_spend.get(key, 0.0) if self._peer_month == month else 0.0
        own = self._spend.get((month, key), 0.0)
        by_request = own + peers
        if self._allocated is None or self._allocated[0] != month:
            return by_request
        _, allocated, own_then = self._allocated
        return max(by_request, allocated.get(key, 0.0) + max(0.0, own - own_then.get(key, 0.0)))

    def set_allocated(self, month: str, usd: dict[str, float]) -> None:
        """Each key's allocated cost this month, every writer's, as read now."""
        with self._lock:
            self._allocated = (month, dict(usd), self._own_spend(month))

    # -- the store (blocking: called from a worker thread) -------------------------------------

    def _docs(self, idents: set[tuple[str, str, str]]) -> dict[str, dict[str, Any]]:
        return {
            "|".join((*ident, self.writer)): {**self._rows[ident].to_dict(),
                                              "writer": self.writer}
            for ident in idents
        }  # fmt: skip

    def _spend_doc(self) -> dict[str, dict[str, Any]]:
        month = self._month()
        return {f"{month}|{self.writer}": {"at": self.clock(), "keys": self._own_spend(month)}}

    def flush(self) -> None:
        """Write this writer's changed rows and its month's spend summary."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            docs = self._docs(dirty)
        if not docs:
            return
        try:
            self.store.put_many("ledger", docs)
            self.store.put_many("spend", self._spend_doc())
        except BaseException:
            with self._lock:  # written next time
                self._dirty |= dirty
            raise

    def unflushed(self) -> dict[str, dict[str, dict[str, Any]]]:
        """What ``flush`` has not written yet, table by table (empty when nothing): the
        documents are whole, so writing them again later, by anyone, counts nothing twice."""
        with self._lock:
            docs = self._docs(self._dirty)
        return {"ledger": docs, "spend": self._spend_doc()} if docs else {}

    def refresh(self, unwritten: Mapping[str, Any] | None = None) -> None:
        """Other writers' month-to-date spend, for budgets. ``unwritten``: spend documents
        the store does not hold yet (a stopped writer's spill file); by name, each replaces
        the store's copy, which can only be older."""
        month = self._month()
        spend: dict[str, float] = {}
        docs = dict(self.store.items("spend", f"{month}|"))
        docs.update({n: d for n, d in (unwritten or {}).items() if n.startswith(f"{month}|")})
        for name, doc in docs.items():
            if name == f"{month}|{self.writer}":
                continue
            # Per key under "keys": a key may be named "at" too.
            for key, usd in (doc.get("keys") or {}).items():
                spend[key] = spend.get(key, 0.0) + float(usd)
        self._peer_spend, self._peer_month = spend, month
        self.spend_known = True

    def query(
        self, key: str | None = None, start: str | None = None, end: str | None = None
    ) -> list[UsageRow]:
        """Rows of every writer, added up per (date, key, model); ``start``/``end`` are
        inclusive ISO dates. Flush first to include this writer's latest counts."""
        totals: dict[tuple[str, str, str], UsageRow] = {}
        prefix = start[:7] if start and end and start[:7] == end[:7] else ""
        for _, doc in self.store.items("ledger", prefix):
            day, k, model = doc["date"], doc["key"], doc["model"]
            if (key is not None and k != key) or (start and day < start) or (end and day > end):
                continue
            row = totals.get((day, k, model))
            if row is None:
                row = totals[(day, k, model)] = UsageRow(day, k, model)
            row.add(doc)
        return [totals[i] for i in sorted(totals)]


def total(rows: list[UsageRow]) -> dict[str, Any]:
    """All rows added up (the ``totals`` of ``GET /v1/usage``)."""
    acc = UsageRow("", "", "")
    for row in rows:
        acc.add(row)
    data = acc.to_dict()
    return {**{f.name: data[f.name] for f in fields(acc) if f.name in COUNTERS},
            "provisional": acc.provisional}  # fmt: skip
