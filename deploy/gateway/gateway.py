"""The gateway: keys, limits, the ledger and the cache, as the wrapper's routes use them.

One ``Gateway`` per wrapper app. The request path only touches memory (a key lookup, the
limit counters, a cache probe, ledger counters); the state store is read and written by one
background task, every ``VLLM_STATE_SYNC_INTERVAL`` seconds and at shutdown.

Who may call (``is_open`` / ``authenticate``), decided before the first request is answered:
the store is read at start (``start``, from the app's lifespan, or by the first request when
a server runs no lifespan). The wrapper is open (everyone is the admin ``anonymous``) only
when no key is configured, ``VLLM_REQUIRE_KEY`` is off, and a fresh read of the store shows
no key and no ``sealed`` mark (written the first time a store holds a key). A store that
cannot be read never opens it: keyed routes answer 503 ``state_store_unavailable`` instead,
and keys made at run time keep working for ``VLLM_STATE_KEY_GRACE`` seconds after the last
good read.

A sync reads before it writes, and each step on its own: a failed write never stops reading
keys, revocations and other wrappers' counts. Failures are counted (``/metrics``), shown
(``/status``) and retried with back-off. Rows the store cannot take at shutdown go to a
local spill file, written at the next start (spill.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import statistics
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

import orjson

from ..core.contract import OUTPUT_CAPS, PROMPT_FIELDS
from ..core.errors import StoreUnavailable
from ..settings.settings import Settings
from .allocation import UNALLOCATED, Allocation, Life, allocate, by_model, merge_lives
from .cache import CacheLookup, ResponseCache, canonical_json
from .keys import KeyRecord, KeyRing, load_file, new_key, parse_entries
from .ledger import Ledger, UsageRow, seconds_to_next_month
from .limiter import CompletionSizes, LimitExceeded, RateLimits, Ticket
from .spill import Spill
from .store import (
    FORMAT,
    SEALED,
    STATE_FORMAT,
    StateStore,
    StoreHealth,
    describe,
    open_store,
)
from .uptime import TABLE as UPTIME
from .uptime import LifeRecord, UptimeMeter

__all__ = [
    "DEFAULT_LOCAL_STATE",
    "Admission",
    "Gateway",
    "configured_keys",
    "month_start",
    "prompt_estimate",
]

log = logging.getLogger("vllm_autoscale.gateway")
DEFAULT_LOCAL_STATE = "sqlite:///~/.local/state/vllm-autoscale/gateway.sqlite3"
_COMPLETION_FIRST = 256  # completion tokens an uncapped request holds before its key has a history
_COST_FLOOR_S = 10.0  # GPU seconds an admitted request is assumed to cost, at least
_ALLOCATE_EVERY_S = 10.0  # budgets' allocated spend is read again this often (a month's lives)
_MAX_BACKOFF_S = 30.0  # longest pause between sync attempts while the store fails


def configured_keys(settings: Settings) -> list[KeyRecord]:
    """The keys the settings declare: the seed's one key, ``VLLM_API_KEYS``, the keys file."""
    records: list[KeyRecord] = []
    if settings.wrapper_api_key is not None:
        records += parse_entries(
            [{"name": "default", "key": settings.wrapper_api_key.get_secret_value(),
              "role": "admin"}], "VLLM_WRAPPER_API_KEY"
        )  # fmt: skip
    if settings.api_keys is not None:
        try:
            entries = orjson.loads(settings.api_keys.get_secret_value())
        except orjson.JSONDecodeError:
            raise ValueError("VLLM_API_KEYS is not valid JSON (a list of key entries)") from None
        records += parse_entries(entries if isinstance(entries, list) else [entries],
                                 "VLLM_API_KEYS")  # fmt: skip
    if settings.api_keys_file is not None:
        records += load_file(settings.api_keys_file)
    return records


def _month(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m")


def month_start(ts: float) -> float:
    """The start of ``ts``'s UTC month (Unix time)."""
    day = datetime.fromtimestamp(ts, tz=timezone.utc)
    return day.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def _month_starts(first: float, last: float) -> list[float]:
    """The start of every UTC month from ``first``'s to ``last``'s."""
    starts, t = [], month_start(first)
    while t <= last:
        starts.append(t)
        t = month_start(t + 32 * 86400)
    return starts


def _day_start(date: str) -> float:
    return datetime.fromisoformat(date).replace(tzinfo=timezone.utc).timestamp()


def prompt_estimate(body: Mapping[str, Any]) -> int:
    """A prompt's tokens without a tokenizer: about 4 bytes a token of whichever fields carry
    it on the request's route (chat's messages, a text completion's prompt, a Response's
    input and instructions)."""
    size = sum(len(canonical_json(body[name])) for name in PROMPT_FIELDS if body.get(name))
    return size // 4 + 1


def _writer_id() -> str:
    # On Modal, the container's task id; locally the host and process. Plus a random part:
    # a restarted process is a new writer and never rewrites the old one's rows.
    base = os.environ.get("MODAL_TASK_ID") or f"{socket.gethostname()}-{os.getpid()}"
    return f"{base}-{uuid.uuid4().hex[:8]}"


class Admission:
    """An admitted request's holds on its key: the rate-limit ticket and the cost reserved
    against its budget. ``settle`` once the request is booked (or failed); idempotent."""

    __slots__ = ("gateway", "key", "settled", "ticket", "usd")

    def __init__(self, gateway: Gateway, key: str, ticket: Ticket, usd: float) -> None:
        self.gateway, self.key, self.ticket, self.usd = gateway, key, ticket, usd
        self.settled = False

    def settle(self, used_tokens: int | None = None) -> None:
        if self.settled:
            return
        self.settled = True
        self.ticket.settle(used_tokens)
        if self.usd:
            self.gateway._release(self.key, self.usd)


class Gateway:
    def __init__(
        self,
        settings: Settings,
        store: StateStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.keys = KeyRing(configured_keys(settings), {
            "rpm": settings.default_rpm, "tpm": settings.default_tpm,
            "max_streams": settings.default_max_streams,
            "monthly_budget_usd": settings.default_monthly_budget_usd,
        })  # fmt: skip
        self.store_url = settings.state_url or DEFAULT_LOCAL_STATE
        self.store = store or open_store(self.store_url)
        # A memory store dies with its process: nothing to write at a later start.
        self.spill = (
            None if urlparse(self.store_url).scheme == "memory"
            else Spill(settings.state_spill_dir, self.store_url)
        )  # fmt: skip
        self.writer = _writer_id()
        self.limits = RateLimits()
        self.ledger = Ledger(self.store, self.writer, clock)
        self.uptime = UptimeMeter(self.writer, clock)
        self._prices: dict[str, float] = {}  # served model -> GPU dollars a second
        self._lives: list[Life] = []  # every wrapper's, as of the last allocation
        self._allocated_at = float("-inf")
        self.store_format: int | None = None  # the store's documents' format, once read
        self._gpu: dict[str, dict[str, Any]] = {}  # gpu_summary's figures, as of that read
        self._boots: dict[str, list[tuple[float, float]]] = {}  # model -> (start, boot s)
        self.cache = (
            ResponseCache(settings.cache_max_entries, settings.cache_max_bytes,
                          settings.cache_ttl, settings.cache_shared)
            if settings.cache_max_entries > 0 else None
        )  # fmt: skip
        self.clock = clock
        self.health = StoreHealth()
        self.on_store_error: Callable[[str], None] | None = None
        """Called with the operation's name on each failed store call (the metrics' hook)."""
        self._sealed = not self.keys.empty  # a configured key closes the wrapper at once
        self._seal_pending = not self.keys.empty
        self._keys_read_at: float | None = None  # monotonic; None: never read
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._books: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._books_scheduled = False
        self._in_flight_usd: dict[str, float] = {}
        self._recent_costs: deque[float] = deque(maxlen=32)
        self.completions = CompletionSizes(first=_COMPLETION_FIRST)
        """Each key's recent completion sizes: what an uncapped request reserves of ``tpm``."""

    # -- after an answer is sent ------------------------------------------------------------------

    def later(self, book: Callable[..., None], *args: Any) -> None:
        """Keep an answer's books (limits settled, ledger, metrics, cache) once it is on its
        way, not before: they cost the caller no latency. Kept at the loop's next turn, and
        in any case before the next request is looked up or admitted."""
        self._books.append((book, args))
        if not self._books_scheduled:
            self._books_scheduled = True
            asyncio.get_running_loop().call_soon(self.keep_books)

    def keep_books(self) -> None:
        self._books_scheduled = False
        while self._books:
            book, args = self._books.popleft()
            try:
                book(*args)
            except Exception:  # one answer's bookkeeping never fails the next request
                log.exception("keeping an answer's books failed")

    # -- who is asking ---------------------------------------------------------------------------

    def _fresh(self) -> bool:
        """Whether the stored keys were read within the grace period."""
        at = self._keys_read_at
        return at is not None and time.monotonic() - at <= self.settings.state_key_grace

    def is_open(self) -> bool:
        """Open: no key configured or stored, the store never held one (read freshly), and
        ``VLLM_REQUIRE_KEY`` off. Every other case is closed."""
        return (
            self.keys.empty and not self._sealed and not self.settings.require_key and self._fresh()
        )

    async def authenticate(self, authorization: str) -> KeyRecord | None:
        """The key of an ``Authorization`` header value; None when it names no key (401).
        An open wrapper takes everyone as ``anonymous``. Raises ``StoreUnavailable`` (503)
        when the answer depends on a store that cannot be read."""
        if not self._started:
            await self.start()
        if self.is_open():
            return self.keys.anonymous
        scheme, _, token = authorization.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        record = self.keys.find(token) if token else None
        if record is not None:
            if record.source == "store" and not self._fresh():
                raise self._unavailable("the keys made at run time")
            return record
        if self._fresh() or (not token and (self._sealed or self.settings.require_key)):
            return None
        # An unknown token may be a stored key; no token may be an open wrapper: unknown.
        raise self._unavailable("the keys")

    def _unavailable(self, what: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"the gateway's state store ({describe(self.store_url)}) cannot be read, so "
            f"{what} cannot be checked; retry shortly",
            retry_after=max(1.0, self.settings.state_sync_interval),
        )

    # -- starting -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the store before the first request is answered (keys, the seal, rows a
        stopped wrapper spilled), log whether the wrapper is open and why, and start the
        background sync. Called by the app's lifespan; the first request calls it too when
        a server runs no lifespan. Never raises: a store that fails leaves it closed."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await asyncio.to_thread(self._first_sync)
            self._started = True
            self._log_mode()
            self._ensure_sync()

    def _first_sync(self) -> None:
        if self.spill is not None:
            self._step("write spilled rows", lambda: self.spill.replay(self.store))  # type: ignore[union-attr]
        if self._seal_pending:
            self._step("write seal", self._seal)
        self._step("read format", self._check_format)
        # Keys first (who may call), then what budgets and limits need: a restarted wrapper
        # knows the month's spend and its peers' counts before its first request.
        read = [
            self._step("read keys", self._read_keys),
            self._step("read spend", self._read_spend),
            self._step("read limits", self._read_limits),
            self._step("read uptime", self._read_allocation),
        ]
        if all(read):
            self.health.ok()

    def _log_mode(self) -> None:
        where = describe(self.store_url)
        stored = len(self.keys.records()) - len(self.keys.configured)
        if self.is_open():
            log.warning(
                "the wrapper is OPEN: no key is configured, the state store (%s) holds none "
                "and never did; every caller is the admin 'anonymous'. Create a key "
                "(POST /v1/keys) or set VLLM_WRAPPER_API_KEY / VLLM_REQUIRE_KEY=true to close "
                "it", where,
            )  # fmt: skip
        elif self._keys_read_at is None:
            log.error(
                "the wrapper is closed: the state store (%s) cannot be read (%s); keyed "
                "routes answer 503 except for the %d configured key(s) until it can",
                where, self.health.last_error, len(self.keys.configured),
            )  # fmt: skip
        else:
            why = ("VLLM_REQUIRE_KEY is set" if self.settings.require_key and self.keys.empty
                   else "the store held keys before" if self.keys.empty else "")  # fmt: skip
            log.info(
                "the wrapper is closed: %d configured key(s), %d stored in %s%s",
                len(self.keys.configured), stored, where,
                f"; no key works until one is configured ({why})" if why else "",
            )  # fmt: skip

    # -- before the GPU --------------------------------------------------------------------------

    def lookup(self, caller: KeyRecord, body: dict[str, Any], cache_control: str) -> CacheLookup:
        if self._books:
            self.keep_books()
        if self.cache is None:
            return CacheLookup(None)
        return self.cache.lookup(caller.name, body, cache_control)

    def admit(
        self, caller: KeyRecord, bodies: list[dict[str, Any]], stream: bool = False
    ) -> Admission:
        """Check the key's budget and take its rate limits for ``bodies``; raise
        ``LimitExceeded`` (nothing taken) when one is over. Against the budget count the
        spend booked (every wrapper's, as of the last sync) and what this wrapper's requests
        in flight are expected to cost: N concurrent requests overrun it by about one."""
        if self._books:
            self.keep_books()
        budget = caller.monthly_budget_usd
        usd = 0.0
        if budget is not None:
            if not self.ledger.spend_known:  # never read: the month's spend is unknown
                raise self._unavailable(f"key {caller.name!r}'s spend against its budget")
            held = self._in_flight_usd.get(caller.name, 0.0)
            if self.ledger.month_spend(caller.name) + held >= budget:
                now = self.clock()
                wait = seconds_to_next_month(now)
                resets = datetime.fromtimestamp(round(now + wait), tz=timezone.utc)
                raise LimitExceeded(caller.name, "monthly_budget_usd", budget, wait, resets)
            usd = self.cost_estimate() * max(1, len(bodies))
        tokens = sum(self.reserve(b, caller.name) for b in bodies) if caller.tpm is not None else 0
        ticket = self.limits.admit(caller, len(bodies), tokens, stream)
        if usd:
            self._in_flight_usd[caller.name] = self._in_flight_usd.get(caller.name, 0.0) + usd
        return Admission(self, caller.name, ticket, usd)

    def _release(self, key: str, usd: float) -> None:
        left = self._in_flight_usd.get(key, 0.0) - usd
        if left > 1e-12:
            self._in_flight_usd[key] = left
        else:
            self._in_flight_usd.pop(key, None)

    def cost_estimate(self) -> float:
        """What a request is assumed to cost until it is booked: the setting, or the mean of
        recent requests, at least ``_COST_FLOOR_S`` GPU seconds."""
        if self.settings.request_cost_estimate_usd is not None:
            return self.settings.request_cost_estimate_usd
        s = self.settings
        floor = _COST_FLOOR_S * s.gpu_price_per_hour * s.gpu_count / 3600
        recent = statistics.fmean(self._recent_costs) if self._recent_costs else 0.0
        return max(floor, recent)

    def reserve(self, body: dict[str, Any], key: str | None = None) -> int:
        """Tokens to hold for a request: its prompt and tools (about 4 bytes a token) and, for
        each of its ``n`` choices, its output cap. Without a cap the engine may write up to
        the rest of the context, but holding that would take a small key's whole minute:
        it holds a realistic completion instead (``VLLM_TPM_COMPLETION_RESERVE``, else the
        95th percentile of ``key``'s recent ones), at most the rest of the context. Usage
        over the hold becomes the key's token debt when it is settled."""
        prompt = prompt_estimate(body)
        if body.get("tools"):
            prompt += len(canonical_json(body["tools"])) // 4
        cap = next((body[name] for name in OUTPUT_CAPS if body.get(name)),
                   self.settings.default_max_tokens)  # fmt: skip
        choices = body.get("n")
        choices = choices if isinstance(choices, int) and choices > 1 else 1
        if cap:
            output = int(cap)
        else:
            s = self.settings
            expected = s.tpm_completion_reserve
            if expected is None:
                expected = self.completions.p95(key)
            context = s.max_model_len or s.preset.max_model_len
            output = max(0, min(expected, context - prompt))
        return prompt + choices * output

    # -- after the GPU ---------------------------------------------------------------------------

    def record(self, caller: KeyRecord, model: str, usage: Mapping[str, Any] | None,
               meta: Mapping[str, Any] | None = None, cache_hit: bool = False,
               requests: int = 1, estimated: bool = False) -> None:  # fmt: skip
        """One answer in the ledger: served by the engine (``meta`` holds its GPU seconds,
        cold start and cost) or replayed from the cache; ``estimated``: the tokens were
        counted by the wrapper, not reported by the engine."""
        meta = meta or {}
        cost = meta.get("cost") or {}
        usd = float(cost.get("usd") or 0.0) + float(cost.get("cold_start_usd") or 0.0)
        self.ledger.record(
            caller.name, model, dict(usage or {}),
            gpu_seconds=float(cost.get("gpu_seconds") or 0.0),
            cold_start=bool(meta.get("cold_start")),
            cost_usd=usd, cache_hit=cache_hit, requests=requests, estimated=estimated,
        )  # fmt: skip
        if not cache_hit and usd > 0:
            self._recent_costs.append(usd / max(1, requests))
        if not cache_hit and usage:  # what the key's uncapped requests will reserve
            completion = usage.get("completion_tokens")
            if isinstance(completion, int):
                self.completions.add(caller.name, completion, requests)

    # -- GPU up-time: the bill, shared (uptime.py, allocation.py) --------------------------------

    def meter(self, model: str, transport: object, settings: Settings) -> None:
        """Meter a served model's engine containers, priced at its GPU's price."""
        self._prices[model] = settings.gpu_price_per_hour * settings.gpu_count / 3600
        self.uptime.watch(model, transport, float(settings.scaledown_window))

    def price_per_second(self, model: str) -> float:
        s = self.settings
        return self._prices.get(model, s.gpu_price_per_hour * s.gpu_count / 3600)

    def _life_records(self, since: float | None) -> list[LifeRecord]:
        """Every writer's records of the lives that may overlap [since, now]: the store's,
        with this wrapper's own from memory (fresher). Blocking."""
        now = self.clock()
        if since is None:
            prefixes = [""]
        else:  # a life is filed under the month it began: one may span into the next
            first = month_start(since) - 1
            prefixes = sorted({_month(t) + "|" for t in _month_starts(first, now)})
        own = {r.container: r for r in self.uptime.records()}
        mine = f"|{self.writer}"
        records = [
            LifeRecord.from_doc(doc)
            for prefix in prefixes
            for name, doc in self.store.items(UPTIME, prefix)
            if not (name.endswith(mine) and doc.get("container") in own)
        ]
        return records + list(own.values())

    def lives(self, since: float | None = None, project: bool = False) -> list[Life]:
        """The engine containers' lives (every wrapper's view merged), those that ended
        before ``since`` left out. Blocking: reads the store."""
        lives = merge_lives(self._life_records(since), self.clock(), project)
        return [life for life in lives if since is None or life.end >= since]

    def allocation(
        self, start: float | None = None, end: float | None = None, project: bool = False
    ) -> dict[tuple[str, str, str], Allocation]:
        """(day, model, key) -> its share of the GPU's up-time in [start, end). Blocking."""
        policy = self.settings.gpu_cost_allocation
        return allocate(self.lives(start, project), policy, start, end)

    def arrivals(self, model: str, since: float) -> list[float]:
        """Arrival times of the requests ``model``'s engines served since ``since`` (Unix
        time, sorted): the traffic the window advisor replays. Blocking."""
        return sorted(a for life in self.lives(since) if life.model == model
                      for a in life.arrivals if a >= since)  # fmt: skip

    def _read_allocation(self) -> None:
        """This month's allocated cost per key, for budgets: open lives counted to their
        expected stop (the tail a request causes is held at once). And the GPU figures of
        ``gpu_summary`` (open lives up to now)."""
        now = self.clock()
        start = month_start(now)
        records = self._life_records(start)
        policy = self.settings.gpu_cost_allocation
        usd: dict[str, float] = {}
        projected = allocate(merge_lives(records, now, project=True), policy, start)
        for (_, model, key), share in projected.items():
            if key != UNALLOCATED:
                usd[key] = usd.get(key, 0.0) + share.gpu_seconds * self.price_per_second(model)
        self.ledger.set_allocated(_month(now), usd)
        lives = merge_lives(records, now)
        self._gpu = self.gpu_summary(lives, now)
        boots: dict[str, list[tuple[float, float]]] = {}
        for life in lives:  # sorted by start
            if life.ready_at is not None:
                boots.setdefault(life.model, []).append(
                    (life.up_since, life.ready_at - life.up_since)
                )
        self._boots = {model: seconds[-20:] for model, seconds in boots.items()}
        self._allocated_at = time.monotonic()

    def boot_times(self, model: str) -> list[float]:
        """Seconds ``model``'s recent engine boots took (every wrapper's, this month, oldest
        first), as of the last sync that read them, with this wrapper's own since."""
        known = self._boots.get(model, [])
        last = known[-1][0] if known else float("-inf")
        # This wrapper's boots since that read (the meter has them at once).
        fresh = sorted(
            (r.up_since, r.ready_at - r.up_since)
            for r in self.uptime.records()
            if r.model == model and r.ready_at is not None and r.up_since > last
        )
        return [seconds for _, seconds in known + fresh]

    def gpu_summary(self, lives: list[Life], now: float) -> dict[str, dict[str, Any]]:
        """Per model: today's and this month's GPU up-time (busy, boot, idle) and what it
        cost, what went to keys and what did not, and always-on for the month so far."""
        policy = self.settings.gpu_cost_allocation
        month, today = month_start(now), now - now % 86400
        periods = {"today": by_model(allocate(lives, policy, today)),
                   "month": by_model(allocate(lives, policy, month))}  # fmt: skip
        out: dict[str, dict[str, Any]] = {}
        for model in sorted(set(self._prices) | {life.model for life in lives}):
            per_s = self.price_per_second(model)
            out[model] = {"price_per_hour_usd": round(per_s * 3600, 6)}
            for period, figures in periods.items():
                f = figures.get(model) or {"up_s": 0.0, "busy_s": 0.0, "boot_s": 0.0,
                                           "idle_s": 0.0, "allocated_s": 0.0}  # fmt: skip
                up = f["up_s"]
                out[model][period] = {
                    **{k: round(f[k], 3) for k in ("up_s", "busy_s", "boot_s", "idle_s")},
                    "busy_share": round(f["busy_s"] / up, 4) if up else None,
                    "idle_share": round(f["idle_s"] / up, 4) if up else None,
                    "cost_usd": round(up * per_s, 6),
                    "allocated_usd": round(f["allocated_s"] * per_s, 6),
                    "unallocated_usd": round((up - f["allocated_s"]) * per_s, 6),
                }
            out[model]["month"]["always_on_usd"] = round((now - month) * per_s, 6)
        return out

    def gpu_cached(self) -> dict[str, dict[str, Any]]:
        """``gpu_summary`` as of the last sync that read it (``/status``, ``/metrics``)."""
        return self._gpu

    def usage(self, key: str | None, start: str | None, end: str | None) -> list[UsageRow]:
        """``GET /v1/usage``'s rows: the ledger's requests and tokens per (day, key, model),
        with the GPU's up-time allocated to each (``gpu_seconds``, ``cost_usd``, split into
        busy, boot and idle) and one ``(unallocated)`` row per model and day where some is
        not a key's. Rows whose requests reported no container (a transport that does not
        say) keep their requests' own seconds and cost. Blocking."""
        rows = {(r.date, r.key, r.model): r for r in self.ledger.query(key, start, end)}
        for row in rows.values():
            row.engine_seconds = row.busy_seconds = row.gpu_seconds
        t0 = _day_start(start) if start else None
        t1 = _day_start(end) + 86400 if end else None
        shares = {(day, k, model): share
                  for (day, model, k), share in self.allocation(t0, t1).items()
                  if key is None or k == key}  # fmt: skip
        for ident, share in shares.items():
            row = rows.get(ident)
            if row is None:
                row = rows[ident] = UsageRow(*ident)
            row.busy_seconds, row.boot_seconds, row.idle_seconds = (
                share.busy_seconds, share.boot_seconds, share.idle_seconds)  # fmt: skip
            row.gpu_seconds = share.gpu_seconds
            row.cost_usd = share.gpu_seconds * self.price_per_second(ident[2])
            row.provisional = share.provisional
        return [rows[i] for i in sorted(rows)]

    # -- key management (admin routes) -----------------------------------------------------------

    def create_key(self, entry: dict[str, Any]) -> tuple[str, KeyRecord]:
        """A new stored key: its secret (shown once) and its record. Blocking (the store).
        The store is sealed first: once it holds a key, no wrapper on it is open again."""
        if self.keys.get(str(entry.get("name"))) is not None:
            raise KeyError(entry.get("name"))
        token = new_key()
        (record,) = parse_entries([{**entry, "key": token}], "store")
        self._seal()
        self.store.put_many("keys", {record.name: record.to_doc()})
        self.keys.add_stored(record)
        return token, self.keys.get(record.name) or record

    def update_key(self, name: str, changes: Mapping[str, Any]) -> KeyRecord:
        """Change a stored key's role or limits in place (a limit set to None takes the
        ``VLLM_DEFAULT_*`` one again); its secret stays. Blocking (the store): the stored
        document is read afresh and rewritten whole, and other wrappers take it at their
        next sync. ``KeyError`` when the store holds no such key."""
        doc = self.store.get("keys", name)
        if doc is None:
            raise KeyError(name)
        entry = {k: v for k, v in doc.items() if k != "source"}
        (record,) = parse_entries([{**entry, **changes, "name": name}], "store")
        self.store.put_many("keys", {name: record.to_doc()})
        self.keys.add_stored(record)
        return self.keys.get(name) or record

    def revoke_key(self, name: str) -> bool:
        """Remove a stored key; blocking. Other wrappers drop it at their next sync."""
        removed = self.store.delete("keys", name)
        self.keys.remove_stored(name)
        return removed

    # -- the state store -------------------------------------------------------------------------

    def _check_format(self) -> None:
        """Mark the store with this code's format if it has none; say so if it is newer."""
        doc = self.store.get("meta", FORMAT)
        found = int((doc or {}).get("version", 0))
        if found > STATE_FORMAT:
            log.warning("the state store (%s) is in format %d, newer than this wrapper's %d "
                        "(a rollback?): its documents are read as they are",
                        describe(self.store_url), found, STATE_FORMAT)  # fmt: skip
        elif doc is None or found < STATE_FORMAT:
            mark = {"version": STATE_FORMAT, "from": found, "at": time.time(), "by": self.writer}
            self.store.put_many("meta", {FORMAT: mark})
            found = STATE_FORMAT
        self.store_format = found

    def _seal(self) -> None:
        self.store.put_many("meta", {SEALED: {"at": time.time(), "by": self.writer}})
        self._sealed, self._seal_pending = True, False

    def _read_keys(self) -> None:
        sealed = self.store.get("meta", SEALED) is not None
        stored = [doc for _, doc in self.store.items("keys")]
        records = parse_entries(
            [{k: v for k, v in d.items() if k != "source"} for d in stored], "store"
        )
        self.keys.set_stored(records)
        if records and not sealed:  # a store from before the seal existed: seal it now
            self._seal_pending = True
        self._sealed = self._sealed or sealed or bool(records)
        self._keys_read_at = time.monotonic()

    def _read_spend(self) -> None:
        # A predecessor's spill file the store has not taken yet still counts against budgets.
        unwritten = self.spill.documents("spend") if self.spill is not None else None
        self.ledger.refresh(unwritten)

    def _read_limits(self) -> None:
        stale = max(10.0, 5 * self.settings.state_sync_interval)
        peers = [doc for name, doc in self.store.items("limits") if name != self.writer]
        self.limits.absorb(peers, stale_after=stale)

    def _write_limits(self) -> None:
        self.store.put_many("limits", {self.writer: self.limits.publish()})

    def _step(self, op: str, call: Callable[[], object]) -> bool:
        """One store operation; a failure is counted and logged, never raised."""
        try:
            call()
        except Exception as exc:
            self.store_failed(op, exc)
            return False
        return True

    def store_failed(self, op: str, exc: BaseException) -> None:
        """Count, show and log a failed store call (``op`` names it: "read ledger" ...)."""
        self.health.failed(op, exc)
        log.warning("state store %s failed: %s", op, self.health.last_error)
        if self.on_store_error is not None:
            self.on_store_error(op)

    def sync_now(self) -> bool:
        """Read the stored keys (and revocations), other wrappers' counts and spend; then
        write this wrapper's ledger rows and counts. Each step runs whatever the others did.
        Blocking: run it in a thread. True when every step succeeded."""
        results = []
        if self.spill is not None and self.spill.pending():  # the store refused it so far
            results.append(self._step("write spilled rows", lambda: self.spill.replay(self.store)))  # type: ignore[union-attr]
        results += [
            self._step("read keys", self._read_keys),
            self._step("read limits", self._read_limits),
            self._step("read spend", self._read_spend),
            self._step("write ledger", self.ledger.flush),
            self._step("write limits", self._write_limits),
            self._step("write uptime", lambda: self.uptime.flush(self.store)),
        ]
        if self._seal_pending:
            results.append(self._step("write seal", self._seal))
        if time.monotonic() - self._allocated_at >= _ALLOCATE_EVERY_S:
            results.append(self._step("read uptime", self._read_allocation))
        ok = all(results)
        if ok:
            self.health.ok()
        return ok

    async def sync(self) -> bool:
        self.keep_books()  # answers already sent are written with this sync
        return await asyncio.to_thread(self.sync_now)

    def _ensure_sync(self) -> None:
        if self._task is None and not self._closed:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule
                self._task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        interval = self.settings.state_sync_interval
        delay = interval
        while True:
            await asyncio.sleep(delay)
            try:
                ok = await self.sync()
            except Exception:  # a bug, not the store: keep syncing
                log.exception("state store sync failed")
                ok = False
            # Back off while the store fails, up to _MAX_BACKOFF_S (or the interval, if longer).
            delay = interval if ok else min(delay * 2, max(interval, _MAX_BACKOFF_S))

    def store_status(self) -> dict[str, Any]:
        """What ``/status`` shows of the store (no key, no hash)."""
        return {
            "url": describe(self.store_url),
            "format": self.store_format,
            "open": self.is_open(),
            "keys_read_s_ago": (
                None if self._keys_read_at is None
                else round(time.monotonic() - self._keys_read_at, 1)
            ),
            **self.health.to_dict(),
        }  # fmt: skip

    async def aclose(self) -> None:
        """Stop syncing and write everything once more (a restart loses no ledger row; rows
        the store cannot take go to the spill file). Never raises: the app's shutdown must
        go on to close its transports."""
        self._closed = True
        self.keep_books()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self._final_flush)

    def _final_flush(self) -> None:
        self.uptime.close_exact()  # the engines this wrapper supervises stop with it
        wrote_uptime = self._step("write uptime", lambda: self.uptime.flush(self.store))
        if not self._step("write ledger", self.ledger.flush) or not wrote_uptime:
            self._spill()
        self._step("write limits", lambda: self.store.delete("limits", self.writer))
        with contextlib.suppress(Exception):
            self.store.close()

    def _spill(self) -> None:
        pending = self.ledger.unflushed()
        lives = self.uptime.unflushed()
        if lives:
            pending[UPTIME] = lives
        if not pending:
            return
        rows = len(pending.get("ledger", {})) + len(lives)
        if self.spill is not None:
            try:
                path = self.spill.keep(self.writer, pending)
            except OSError as exc:
                log.error("cannot keep %d ledger row(s) in the spill folder (%s)", rows, exc)
            else:
                log.error("the state store is down: %d ledger row(s) kept in %s, written at "
                          "the next start", rows, path)  # fmt: skip
                return
        # Last resort: the rows in the log (key names and counts; never a key).
        log.error("ledger rows not written: %s", orjson.dumps(pending).decode())
