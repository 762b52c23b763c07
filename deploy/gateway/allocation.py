"""The bill, shared: every second a GPU container was up, attributed to the keys that used it.

What the cloud charges is up-time times price, whatever the container did. So per container life
(``uptime.py``, every wrapper's view merged) the seconds split into:
- **boot**: from ``up_since`` until it served (``ready_at``);
- **busy**: the union of its requests' engine intervals (concurrent requests share it);
- **idle**: the rest: the scaledown tail after the last request and warm-window time.
Busy seconds go to the keys by their engine seconds that day (concurrent requests split the
GPU by their share of the work, never counted twice). Boot and idle seconds are the life's
overhead, and the operator's ``policy`` decides: ``proportional`` (the default) spreads them
over the keys by their share of the life's work, ``overhead`` keeps them on one
``(unallocated)`` line. A life nobody used (a warm-up, a warm window) is unallocated either
way. Per model and UTC day the keys plus ``(unallocated)`` add up to the up-time exactly.

A life still up (or whose inferred stop is yet to come) is ``provisional``: its figures grow
until it closes. ``project=True`` counts such a life to its expected stop (last request plus
the scaledown window): what the budgets hold against, the tail a request will cause included.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from .uptime import LifeRecord, merge_intervals

__all__ = ["UNALLOCATED", "Allocation", "Life", "Policy", "allocate", "by_model", "merge_lives"]

UNALLOCATED = "(unallocated)"
Policy = Literal["proportional", "overhead"]
_DAY = 86400.0


def _day_start(ts: float) -> float:
    return ts - ts % _DAY


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")


def _overlap(a: float, b: float, lo: float, hi: float) -> float:
    return max(0.0, min(b, hi) - max(a, lo))


@dataclass
class Life:
    """One container's life, every wrapper's view merged."""

    model: str
    container: str
    up_since: float
    ready_at: float | None
    end: float
    final: bool
    busy: list[list[float]]
    work: dict[str, dict[str, list[float]]]
    requests: int
    arrivals: list[float] = field(default_factory=list)
    last_active: float = 0.0

    def public(self) -> dict[str, Any]:
        """The life as ``GET /v1/gpu`` lists it (no key names)."""
        return {"model": self.model, "container": self.container,
                "up_since": round(self.up_since, 3),
                "ready_at": None if self.ready_at is None else round(self.ready_at, 3),
                "last_active": round(self.last_active, 3) or None,
                "stopped_at": round(self.end, 3) if self.final else None,
                "requests": self.requests, "cold_start": self.requests > 0,
                "estimated": not self.final}  # fmt: skip


def merge_lives(records: Iterable[LifeRecord], now: float, project: bool = False) -> list[Life]:
    """Every writer's record of a container as one life. An exact stop (seen by the
    transport) wins over an inferred one; the busy intervals are the union of all."""
    by_container: dict[str, list[LifeRecord]] = {}
    for rec in records:
        by_container.setdefault(rec.container, []).append(rec)
    lives = []
    for container, recs in by_container.items():
        up = min(r.up_since for r in recs)
        readies = [r.ready_at for r in recs if r.ready_at is not None]
        last = max(r.last_active for r in recs)
        exact = [r for r in recs if r.exact]
        if exact:
            ends = [r.end(now) for r in exact]
            end, final = max(e for e, _ in ends), all(f for _, f in ends)
        else:
            merged = LifeRecord(recs[0].model, container, up, min(readies, default=None),
                                last, window=recs[0].window)  # fmt: skip
            end, final = merged.end(now)
        if project and not final:
            window = recs[0].window
            end = max(now, last + window) if window is not None else now
        work: dict[str, dict[str, list[float]]] = {}
        for r in recs:
            for day, keys in r.work.items():
                for key, (seconds, n) in keys.items():
                    acc = work.setdefault(day, {}).setdefault(key, [0.0, 0])
                    acc[0] += seconds
                    acc[1] += n
        busy = merge_intervals(iv for r in recs for iv in r.busy)
        requests = int(sum(n for keys in work.values() for _, n in keys.values()))
        arrivals = sorted(a for r in recs for a in r.arrivals)
        lives.append(Life(recs[0].model, container, up, min(readies, default=None), max(end, up),
                          final, busy, work, requests, arrivals, last))  # fmt: skip
    return sorted(lives, key=lambda life: life.up_since)


@dataclass
class Allocation:
    """One key's (or the unallocated line's) share of one model's up-time on one day."""

    day: str
    model: str
    key: str
    busy_seconds: float = 0.0
    boot_seconds: float = 0.0
    idle_seconds: float = 0.0
    provisional: bool = False

    @property
    def gpu_seconds(self) -> float:
        return self.busy_seconds + self.boot_seconds + self.idle_seconds

    def add(self, busy: float, boot: float, idle: float, provisional: bool) -> None:
        self.busy_seconds += busy
        self.boot_seconds += boot
        self.idle_seconds += idle
        self.provisional = self.provisional or provisional


def _shares(work: Mapping[str, list[float]]) -> dict[str, float]:
    """Each key's share of the engine seconds (of the requests when none took any time)."""
    seconds = {k: float(v[0]) for k, v in work.items()}
    total = sum(seconds.values())
    if total <= 0:
        seconds = {k: float(v[1]) for k, v in work.items()}
        total = sum(seconds.values())
    return {k: s / total for k, s in seconds.items()} if total > 0 else {}


def allocate(
    lives: Iterable[Life],
    policy: Policy = "proportional",
    start: float | None = None,
    end: float | None = None,
) -> dict[tuple[str, str, str], Allocation]:
    """(day, model, key) -> its seconds, for the lives' time within [start, end)."""
    out: dict[tuple[str, str, str], Allocation] = {}

    def line(day: str, model: str, key: str) -> Allocation:
        row = out.get((day, model, key))
        if row is None:
            row = out[(day, model, key)] = Allocation(day, model, key)
        return row

    for life in lives:
        ready = life.ready_at if life.ready_at is not None else life.up_since
        ready = min(max(ready, life.up_since), life.end)
        life_total: dict[str, list[float]] = {}
        for keys in life.work.values():
            for key, (seconds, n) in keys.items():
                acc = life_total.setdefault(key, [0.0, 0])
                acc[0] += seconds
                acc[1] += n
        overhead_shares = _shares(life_total) if policy == "proportional" else {}
        lo = life.up_since if start is None else max(life.up_since, start)
        hi = life.end if end is None else min(life.end, end)
        t = _day_start(lo)
        while t < hi:
            d_lo, d_hi = max(lo, t), min(hi, t + _DAY)
            day = _day(t)
            t += _DAY
            if d_hi <= d_lo:
                continue
            up = d_hi - d_lo
            boot = _overlap(life.up_since, ready, d_lo, d_hi)
            busy = sum(_overlap(max(a, ready), b, d_lo, d_hi) for a, b in life.busy)
            busy = min(busy, up - boot)
            idle = max(0.0, up - boot - busy)
            busy_shares = _shares(life.work.get(day, {})) or _shares(life_total)
            provisional = not life.final
            for key, share in busy_shares.items():  # the shares add up to 1
                line(day, life.model, key).add(busy * share, 0.0, 0.0, provisional)
            for key, share in overhead_shares.items():
                line(day, life.model, key).add(0.0, boot * share, idle * share, provisional)
            # Busy time with no work to share it by (none recorded) and, under the overhead
            # policy or for a life nobody used, boot and idle: the unallocated line.
            unallocated_busy = 0.0 if busy_shares else busy
            if not overhead_shares:
                line(day, life.model, UNALLOCATED).add(unallocated_busy, boot, idle, provisional)
            elif unallocated_busy:
                line(day, life.model, UNALLOCATED).add(unallocated_busy, 0.0, 0.0, provisional)
    return out


def by_model(shares: Mapping[tuple[str, str, str], Allocation]) -> dict[str, dict[str, float]]:
    """Per model: its up-time (``up_s``, every key's share and the unallocated line) split
    into busy, boot and idle, and how much of it went to keys (``allocated_s``)."""
    out: dict[str, dict[str, float]] = {}
    for (_, model, key), share in shares.items():
        acc = out.setdefault(model, {"up_s": 0.0, "busy_s": 0.0, "boot_s": 0.0, "idle_s": 0.0,
                                     "allocated_s": 0.0, "provisional": False})  # fmt: skip
        acc["up_s"] += share.gpu_seconds
        acc["busy_s"] += share.busy_seconds
        acc["boot_s"] += share.boot_seconds
        acc["idle_s"] += share.idle_seconds
        if key != UNALLOCATED:
            acc["allocated_s"] += share.gpu_seconds
        acc["provisional"] = bool(acc["provisional"]) or share.provisional
    return out
