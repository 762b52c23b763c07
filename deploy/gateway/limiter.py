"""Per-key limits checked before the GPU is touched: requests and tokens per minute, open
streams. (The monthly budget is the ledger's, ``ledger.py``.)

The counting is the ``limits`` library's sliding-window counter (the algorithm Flask-Limiter
and SlowAPI use; no burst at a window's edge, two counters per key). Its in-memory storage
is extended by one thing: other wrappers' counts. Each wrapper publishes its own counters
to the state store and reads everyone else's (``publish`` / ``absorb``, from the gateway's
sync); ``get`` adds them in, so a key's limit holds across wrapper containers to within one
sync interval.

Tokens per minute reserve ``prompt + max_tokens`` when a request is admitted (the prompt
estimated from its size: no tokenizer on the hot path; without ``max_tokens``, a realistic
completion, ``CompletionSizes``) and settle on the real usage when it completes, as
OpenAI's limits do: what was reserved and not used is given back to the window it was
reserved in (a window already gone takes it harmlessly).

Usage over the reservation (an estimate that was low) is not put in a window: a request
that outlives its minute (a cold start, a long stream, a batch) would charge a window that
no longer counts, and even in time the sliding window forgets any overdraft within two
minutes, however much larger than the limit it was. It becomes the key's token *debt*
instead, paid back at the key's own rate, ``tpm`` tokens a minute, continuously; while any
is left the key's requests are refused (``tpm``, nothing taken) with ``Retry-After`` the
time until it is paid. So, over time, a key gets its ``tpm`` and no more. Debts are shared
like the counters: each wrapper publishes its own (``{"debt": {key: [tokens, as_of]}}``)
and adds the others'. The key's debt, all wrappers' together, is paid at ``tpm`` in all,
each wrapper's part in proportion to its size, so every wrapper sees the same total
shrinking at the same rate (to within one sync interval). Admitting a key with no debt
costs one dict lookup.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Literal

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from ..core.errors import ServiceError
from .keys import KeyRecord

__all__ = ["CompletionSizes", "LimitExceeded", "RateLimits", "Ticket"]

LimitName = Literal["rpm", "tpm", "max_streams", "monthly_budget_usd"]
_DESCRIBE = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "max_streams": "concurrent streams",
    "monthly_budget_usd": "monthly budget (USD)",
}


class LimitExceeded(ServiceError):
    """A key went over one of its limits: 429 with ``Retry-After``, naming the limit.

    As OpenAI's: the body's ``type`` names the limit (rpm, tpm, max_streams,
    monthly_budget_usd), its ``code`` is ``rate_limit_exceeded`` (wait and retry) or
    ``insufficient_quota`` (someone must act); ``retry_after`` is whole seconds, at least 1."""

    status_code = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(
        self,
        key: str,
        limit: LimitName,
        allowed: float,
        retry_after: float,
        resets_at: datetime | None = None,
    ) -> None:
        self.key, self.limit, self.allowed = key, limit, allowed
        wait = max(1, math.ceil(retry_after))
        what = _DESCRIBE[limit]
        # A wait of days reads better as the date it ends (``Retry-After`` keeps the seconds).
        when = (
            f"it resets {resets_at.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
            if resets_at is not None
            else f"retry after {wait} s"
        )
        super().__init__(
            f"key {key!r} is over its {what} ({limit}={allowed:g}); {when}",
            error_type=limit,
            retry_after=wait,
        )

    @property
    def code(self) -> str:
        # OpenAI's codes: a rate limit passes; an exhausted quota needs someone to act.
        return "insufficient_quota" if self.limit == "monthly_budget_usd" else "rate_limit_exceeded"


class _SharedStorage(MemoryStorage):
    """``limits``' memory storage whose counts include other wrappers' published ones.

    Private API, on purpose: two name-mangled methods of ``MemoryStorage`` are used,
    ``__schedule_expiry`` (overridden: no timer thread) and ``__expire_events`` (called by
    ``expire``). ``limits`` has no public way to turn the timer off or to expire now (5.8:
    the constructor and every ``incr``/``decr`` arm a ``threading.Timer``), and writing a
    whole storage against ``limits.storage.base`` to avoid two methods would re-implement
    the sliding-window bookkeeping the limits here rest on. So ``limits`` is pinned below
    its next minor in ``deploy/pyproject.toml`` (tested on 5.8), and
    ``tests/unit_tests/gateway/test_limits_contract.py`` fails, naming the attribute, when a
    release moves either (or the ``storage`` counter that ``own`` reads)."""

    STORAGE_SCHEME = ["vllm-autoscale-shared"]  # its own scheme: "memory" stays limits'

    def __init__(self) -> None:
        super().__init__()
        self.peers: dict[str, int] = {}

    def _MemoryStorage__schedule_expiry(self) -> None:
        # limits' memory storage starts a thread every 10 ms under load to drop expired
        # counters; `get` already ignores them, and the gateway's sync calls `expire`.
        # (A private override: see the class docstring for why, and the contract test.)
        pass

    def expire(self) -> None:
        """Drop expired counters (their memory; `get` never counts them)."""
        self._MemoryStorage__expire_events()  # type: ignore[attr-defined]

    def get(self, key: str) -> int:
        return super().get(key) + self.peers.get(key, 0)

    def own(self) -> dict[str, int]:
        """This wrapper's live counters (window keys and counts)."""
        out = {}
        for key in list(self.storage):
            count = MemoryStorage.get(self, key)
            if count > 0:
                out[key] = count
        return out


class _PerMinute(RateLimitItemPerMinute):
    """A per-minute limit whose counters are named without its amount: a key's limit
    changed in place (``PATCH /v1/keys``) counts what the key took this minute already."""

    def key_for(self, *identifiers: bytes | str | int | float) -> str:
        return "/".join([self.namespace, *(str(i) for i in identifiers), "minute"])


def _wall_clock() -> float:
    return time.time()  # looked up at each call: a test may stand in for ``time``


@dataclass(slots=True)
class _Debt:
    """A key's token debt: this wrapper's part (``own`` tokens as of ``as_of``, paid at
    ``tpm``, the key's rate when last seen) and other wrappers' (``peers``: tokens and as
    of when, as they last published them)."""

    own: float = 0.0
    as_of: float = 0.0
    tpm: float = 0.0
    peers: list[tuple[float, float]] = field(default_factory=list)

    def total(self) -> float:
        return self.own + sum(tokens for tokens, _ in self.peers)

    def wait(self, tpm: float, now: float) -> float:
        """Seconds until all of it is paid at ``tpm`` tokens a minute (in all: each part is
        paid in proportion to its share, so each is paid ``total`` / rate after its
        ``as_of``); infinite for a rate of 0."""
        total = self.total()
        if total <= 0:
            return 0.0
        if tpm <= 0:
            return math.inf
        latest = max(t for tokens, t in [(self.own, self.as_of), *self.peers] if tokens > 0)
        return latest + total * 60 / tpm - now

    def own_left(self, now: float) -> float:
        """This wrapper's part still unpaid at ``now``."""
        total = self.total()
        if self.own <= 0 or self.tpm <= 0:
            return max(self.own, 0.0)
        return self.own * max(0.0, 1 - self.tpm / 60 * (now - self.as_of) / total)

    def rebase(self, now: float) -> None:
        self.own, self.as_of = self.own_left(now), now


class CompletionSizes:
    """Each key's last completions (tokens a request), for what a request without an output
    cap is expected to produce: their 95th percentile, or ``first`` before any is known."""

    def __init__(self, keep: int = 100, first: int = 256) -> None:
        self.keep, self.first = keep, first
        self._sizes: dict[str, deque[int]] = {}
        self._p95: dict[str, int] = {}  # computed once per change, asked on every admission

    def add(self, key: str, tokens: int, requests: int = 1) -> None:
        """``requests`` completions of ``tokens`` in all (a batch's share: its mean each)."""
        if requests < 1 or tokens < 0:
            return
        sizes = self._sizes.get(key)
        if sizes is None:
            sizes = self._sizes[key] = deque(maxlen=self.keep)
        sizes.extend([round(tokens / requests)] * min(requests, self.keep))
        self._p95.pop(key, None)

    def p95(self, key: str | None) -> int:
        if key is None or not self._sizes.get(key):
            return self.first
        value = self._p95.get(key)
        if value is None:
            ordered = sorted(self._sizes[key])
            value = self._p95[key] = ordered[math.ceil(0.95 * len(ordered)) - 1]
        return value


@dataclass
class Ticket:
    """An admitted request's hold on its key's limits; ``settle`` once it is done."""

    limits: RateLimits
    key: KeyRecord
    reserved_tokens: int = 0
    window_key: str | None = None
    stream: bool = False
    settled: bool = field(default=False, repr=False)

    def settle(self, used_tokens: int | None = None) -> None:
        """Give back the reserved tokens that were not used (all of them when ``None``: the
        request failed) and the stream slot. Idempotent."""
        if self.settled:
            return
        self.settled = True
        self.limits._settle(self, used_tokens)


class RateLimits:
    """Per-key limits. ``clock`` (seconds since the epoch) dates the token debts and the
    published counters; the ``limits`` windows read ``time.time()`` themselves, so it must
    be that clock (or both stood in for together, as the tests do)."""

    def __init__(self, clock: Callable[[], float] = _wall_clock) -> None:
        self.clock = clock
        self.storage = _SharedStorage()
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self._items: dict[int, RateLimitItem] = {}
        self.streams: Counter[str] = Counter()
        self.peer_streams: dict[str, int] = {}
        # Keys with a debt, this wrapper's or another's. The gateway's sync publishes and
        # absorbs from a worker thread: changes to debts hold the lock.
        self._debts: dict[str, _Debt] = {}
        self._debt_lock = threading.Lock()

    def _per_minute(self, amount: int) -> RateLimitItem:
        item = self._items.get(amount)
        if item is None:
            item = self._items[amount] = _PerMinute(amount)
        return item

    def _retry_after(self, item: RateLimitItem, ident: str) -> float:
        return self.limiter.get_window_stats(item, ident).reset_time - time.time()

    def admit(self, key: KeyRecord, requests: int, tokens: int, stream: bool = False) -> Ticket:
        """Take ``requests`` and ``tokens`` from the key's minute (and a stream slot), or
        raise ``LimitExceeded`` having taken nothing."""
        if stream and key.max_streams is not None:
            open_now = self.streams[key.name] + self.peer_streams.get(key.name, 0)
            if open_now >= key.max_streams:
                raise LimitExceeded(key.name, "max_streams", key.max_streams, 1)
        if key.tpm is not None:
            debt = self._debts.get(key.name)
            if debt is not None:  # before anything is taken
                self._check_debt(key.name, key.tpm, debt)
        ticket = Ticket(self, key, stream=stream)
        if key.rpm is not None:
            self._take("rpm", key, int(key.rpm), requests)
        if key.tpm is not None:
            # A reservation larger than the whole limit could never pass: it takes the limit
            # (at least one token, so that a limit of 0 refuses, as the other limits do).
            cost = min(tokens, max(int(key.tpm), 1))
            try:
                self._take("tpm", key, int(key.tpm), cost)
            except LimitExceeded:
                if key.rpm is not None:  # give the request back: nothing taken
                    self.storage.decr(self._window("rpm", key, int(key.rpm)), requests)
                raise
            ticket.reserved_tokens = cost
            ticket.window_key = self._window("tpm", key, int(key.tpm))
        if stream:
            self.streams[key.name] += 1
        return ticket

    def _check_debt(self, name: str, tpm: float, debt: _Debt) -> None:
        """Refuse the key (``tpm``, nothing taken) until its debt is paid; forget a paid one.
        A key whose ``tpm`` is 0 never pays: it is told to retry in a minute."""
        with self._debt_lock:
            debt.tpm = tpm
            wait = debt.wait(tpm, self.clock())
            if wait <= 0:
                debt.own = 0.0
                if not debt.peers and self._debts.get(name) is debt:
                    del self._debts[name]
                return
        raise LimitExceeded(name, "tpm", tpm, wait if math.isfinite(wait) else 60)

    def _owe(self, name: str, tpm: float, tokens: int) -> None:
        """Add ``tokens`` used over a reservation to the key's debt."""
        now = self.clock()
        with self._debt_lock:
            debt = self._debts.get(name)
            if debt is None:
                debt = self._debts[name] = _Debt()
            debt.own = debt.own_left(now) + tokens
            debt.as_of, debt.tpm = now, tpm

    def _window(self, name: str, key: KeyRecord, amount: int) -> str:
        """The storage key of the limit's current window."""
        item = self._per_minute(amount)
        return self.storage.sliding_window_keys(
            item.key_for(f"{name}:{key.name}"), item.get_expiry(), time.time()
        )[1]

    def _take(self, name: LimitName, key: KeyRecord, amount: int, cost: int) -> None:
        item, ident = self._per_minute(amount), f"{name}:{key.name}"
        if not self.limiter.hit(item, ident, cost=cost):
            raise LimitExceeded(key.name, name, amount, self._retry_after(item, ident))

    def _settle(self, ticket: Ticket, used_tokens: int | None) -> None:
        if ticket.window_key is not None:
            unused = ticket.reserved_tokens - (used_tokens or 0)
            if unused > 0:
                self.storage.decr(ticket.window_key, unused)
            elif unused < 0 and ticket.key.tpm is not None:  # an estimate was low: owe it
                self._owe(ticket.key.name, ticket.key.tpm, -unused)
        if ticket.stream:
            self.streams[ticket.key.name] -= 1
            if self.streams[ticket.key.name] <= 0:
                del self.streams[ticket.key.name]

    # -- sharing across wrappers (called from the gateway's sync) -----------------------------

    def publish(self) -> dict[str, object]:
        """This wrapper's counters and debts, for the state store."""
        self.storage.expire()
        now = self.clock()
        debts: dict[str, list[float]] = {}
        with self._debt_lock:
            for name, debt in list(self._debts.items()):
                debt.rebase(now)
                if debt.own > 0:
                    debts[name] = [debt.own, now]
                elif not debt.peers:
                    del self._debts[name]
        return {
            "at": now,
            "windows": self.storage.own(),
            "streams": dict(self.streams),
            "debt": debts,
        }

    def absorb(self, peers: list[dict], stale_after: float) -> None:
        """Other wrappers' published counters and debts; those not refreshed for
        ``stale_after`` seconds (a stopped wrapper) count no more."""
        windows: Counter[str] = Counter()
        streams: Counter[str] = Counter()
        debts: dict[str, list[tuple[float, float]]] = {}
        now = self.clock()
        for doc in peers:
            if now - float(doc.get("at", 0)) > stale_after:
                continue
            windows.update(doc.get("windows") or {})
            streams.update(doc.get("streams") or {})
            for name, entry in (doc.get("debt") or {}).items():
                try:
                    tokens, as_of = float(entry[0]), float(entry[1])
                except (TypeError, ValueError, IndexError, KeyError):
                    continue
                if tokens > 0 and math.isfinite(tokens) and math.isfinite(as_of):
                    debts.setdefault(name, []).append((tokens, as_of))
        self.storage.peers = dict(windows)
        self.peer_streams = dict(streams)
        with self._debt_lock:
            for name, debt in list(self._debts.items()):
                debt.rebase(now)  # paid so far as the peers' debts were until now
                debt.peers = debts.pop(name, [])
                if debt.own <= 0 and not debt.peers:
                    del self._debts[name]
            for name, entries in debts.items():
                self._debts[name] = _Debt(peers=entries)
