"""GPU up-time: each engine container's life and who used it, kept in the state store.

The meter learns a container's life from two places: a ``Metered`` transport's lives (locally,
the vLLM process the wrapper supervises: start, ready and stop exactly) and the facts every
reply carries (on Modal: the container, when it began costing, when it began serving). A
container whose stop nobody saw is taken to stop ``window`` seconds after its last request,
which is what Modal's scaledown window does: an estimate, and open until that moment passes.

Besides the life, the meter keeps who used the container: engine seconds and requests per
UTC day and key, the union of its busy intervals, and request arrival times (the window
advisor replays them). Each wrapper writes what it saw of a container as one whole document,
``{month}|{container}|{writer}`` in the ``uptime`` table, so a rewrite counts nothing twice;
``allocation.py`` merges the documents by container and shares the up-time out.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..core.contract import ContainerLife, Facts, Metered
from .store import StateStore

__all__ = ["STALE_AFTER_S", "TABLE", "LifeRecord", "UptimeMeter", "merge_intervals"]

TABLE = "uptime"
_MAX_ARRIVALS = 5000  # per container and writer: enough for the advisor, bounded in the store
_BUSY_GAP_S = 0.5  # busy intervals closer than this are one: bounds a document's size
_KEEP_CLOSED_S = 3600.0  # a closed life stays in memory this long after it was written
STALE_AFTER_S = 120.0  # an open exact life not rewritten for this long ended when last seen
_SEEN_EVERY_S = 30.0  # how often an open exact life is rewritten to say it is still up


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")


def merge_intervals(intervals: Iterable[Iterable[float]], gap: float = 0.0) -> list[list[float]]:
    """Sorted, overlapping (or nearer than ``gap``) intervals joined."""
    merged: list[list[float]] = []
    for a, b in sorted((float(a), float(b)) for a, b in intervals):
        if merged and a <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def _add_interval(busy: list[list[float]], began: float, ended: float) -> None:
    """Add [began, ended] to sorted, merged ``busy`` in place; answers end about in order,
    so this is the last interval's extension or an append, rarely a merge of all."""
    last = busy[-1] if busy else None
    if last is not None and last[0] <= began <= last[1] + _BUSY_GAP_S:
        last[1] = max(last[1], ended)
    elif last is None or began > last[1]:
        busy.append([began, ended])
    else:  # out of order: merge the lot
        bisect.insort(busy, [began, ended])
        busy[:] = merge_intervals(busy, _BUSY_GAP_S)


@dataclass
class LifeRecord:
    """What one wrapper saw of one engine container."""

    model: str
    container: str
    up_since: float
    ready_at: float | None = None
    last_active: float = 0.0
    stopped_at: float | None = None
    exact: bool = False
    """``stopped_at`` was seen (a ``Metered`` transport), not inferred from ``window``."""
    window: float | None = None
    """The scaledown window it stops after when idle (None: it is kept up)."""
    busy: list[list[float]] = field(default_factory=list)
    work: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """UTC day -> key -> [engine seconds, requests]."""
    arrivals: list[float] = field(default_factory=list)
    seen_at: float | None = None
    """Last time its writer saw it up (exact lives): a writer killed without a shutdown
    leaves a life that ends there, not one that runs for ever."""

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> LifeRecord:
        known = {f: doc[f] for f in cls.__dataclass_fields__ if f in doc}
        return cls(**known)

    def name(self, writer: str) -> str:
        return f"{_day(self.up_since)[:7]}|{self.container}|{writer}"

    def end(self, now: float) -> tuple[float, bool]:
        """When it stopped (or is taken to stop) and whether that is final as of ``now``."""
        if self.stopped_at is not None:
            return self.stopped_at, True
        if self.exact and self.seen_at is not None and now - self.seen_at > STALE_AFTER_S:
            return self.seen_at, True  # its writer is gone without a word
        if self.exact or self.window is None:  # seen up and not stopped: up until now
            return now, False
        expected = max(self.last_active, self.ready_at or self.up_since) + self.window
        return (expected, True) if expected <= now else (now, False)


class UptimeMeter:
    """This wrapper's view of the engine containers it used; ``flush`` writes it."""

    def __init__(self, writer: str, clock: Callable[[], float] = time.time) -> None:
        self.writer, self.clock = writer, clock
        self._lives: dict[str, LifeRecord] = {}
        self._dirty: set[str] = set()
        self._written_at: dict[str, float] = {}
        self._lock = threading.Lock()  # served() runs on the loop, flush() in a thread
        self._sources: dict[str, Metered] = {}
        self.windows: dict[str, float | None] = {}

    def watch(self, model: str, transport: object, window: float | None) -> None:
        """A served model's engine: its scaledown ``window``, and its exact lives if the
        transport declares ``Metered``."""
        self.windows[model] = window
        if isinstance(transport, Metered):
            self._sources[model] = transport

    def _record(self, model: str, container: str, up_since: float) -> LifeRecord:
        rec = self._lives.get(container)
        if rec is None:
            rec = self._lives[container] = LifeRecord(
                model, container, up_since, window=self.windows.get(model)
            )
        return rec

    def served(
        self,
        model: str,
        key: str,
        facts: Facts | None,
        engine_s: float,
        requests: int = 1,
        ended_at: float | None = None,
    ) -> None:
        """An engine answer of ``engine_s`` seconds for ``key`` that ended at ``ended_at``
        (default: now). Without a container in its facts (a fallback, a cache hit) it used
        no engine container."""
        if facts is None or facts.container is None:
            return
        ended = self.clock() if ended_at is None else ended_at
        began = ended - max(0.0, engine_s)
        up_since = facts.up_since or facts.booted_at or began
        with self._lock:
            rec = self._record(model, facts.container, up_since)
            rec.up_since = min(rec.up_since, up_since)
            if facts.booted_at is not None:
                rec.ready_at = min(rec.ready_at or facts.booted_at, facts.booted_at)
            rec.last_active = max(rec.last_active, ended)
            _add_interval(rec.busy, began, ended)
            used = rec.work.setdefault(_day(began), {}).setdefault(key, [0.0, 0])
            used[0] += max(0.0, engine_s)
            used[1] += requests
            if len(rec.arrivals) < _MAX_ARRIVALS:
                rec.arrivals.append(round(began, 3))
            self._dirty.add(facts.container)

    def pull(self) -> None:
        """The ``Metered`` transports' lives, taken in (their stops are exact)."""
        for model, source in self._sources.items():
            for life in source.lives():
                self._take(model, life)

    def _take(self, model: str, life: ContainerLife) -> None:
        with self._lock:
            rec = self._record(model, life.container, life.up_since)
            before = (rec.up_since, rec.ready_at, rec.stopped_at, rec.exact)
            rec.up_since, rec.ready_at, rec.exact = life.up_since, life.ready_at, True
            rec.stopped_at = life.stopped_at
            if (rec.up_since, rec.ready_at, rec.stopped_at, rec.exact) != before:
                self._dirty.add(life.container)

    def records(self) -> list[LifeRecord]:
        with self._lock:
            return [LifeRecord.from_doc(r.to_doc()) for r in self._lives.values()]

    # -- the store (blocking: called from a worker thread) -------------------------------------

    def flush(self, store: StateStore) -> None:
        """Write the containers this wrapper saw change; forget closed ones written long ago."""
        self.pull()
        now = self.clock()
        with self._lock:
            # An inferred stop passes without any call: rewrite such lives once it has.
            for name, rec in self._lives.items():
                if rec.stopped_at is None and not rec.exact and rec.end(now)[1]:
                    rec.stopped_at = rec.end(now)[0]
                    self._dirty.add(name)
                elif (
                    rec.stopped_at is None
                    and rec.exact
                    and (rec.seen_at is None or now - rec.seen_at >= _SEEN_EVERY_S)
                ):
                    rec.seen_at = now
                    self._dirty.add(name)
            dirty, self._dirty = self._dirty, set()
            docs = {self._lives[c].name(self.writer): self._lives[c].to_doc() for c in dirty}
        if not docs:
            return
        try:
            store.put_many(TABLE, docs)
        except BaseException:
            with self._lock:
                self._dirty |= dirty
            raise
        with self._lock:
            for c in dirty:
                self._written_at[c] = now
            for c, rec in list(self._lives.items()):
                closed = rec.stopped_at is not None and c not in self._dirty
                if closed and now - self._written_at.get(c, now) > _KEEP_CLOSED_S:
                    del self._lives[c]
                    self._written_at.pop(c, None)

    def close_exact(self) -> None:
        """This wrapper stops, and the engines it supervises with it: their lives end now."""
        self.pull()
        now = self.clock()
        with self._lock:
            for name, rec in self._lives.items():
                if rec.exact and rec.stopped_at is None:
                    rec.stopped_at = now
                    self._dirty.add(name)

    def unflushed(self) -> dict[str, dict[str, Any]]:
        """What ``flush`` has not written yet (for the spill file)."""
        with self._lock:
            return {self._lives[c].name(self.writer): self._lives[c].to_doc() for c in self._dirty}
