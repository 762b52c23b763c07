"""The gateway: keys, limits, the ledger and the cache, as the wrapper's routes use them.

One ``Gateway`` per wrapper app. The request path only touches memory (a key lookup, the
limit counters, a cache probe, ledger counters); the state store is read and written by one
background task, every ``VLLM_STATE_SYNC_INTERVAL`` seconds and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ..config import Settings
from .cache import CacheLookup, ResponseCache, canonical_json
from .keys import KeyRecord, KeyRing, load_file, new_key, parse_entries
from .ledger import Ledger, seconds_to_next_month
from .limiter import LimitExceeded, RateLimits, Ticket
from .store import StateStore, open_store

__all__ = ["DEFAULT_LOCAL_STATE", "Gateway", "configured_keys"]

log = logging.getLogger("vllm_autoscale.gateway")
DEFAULT_LOCAL_STATE = "sqlite:///~/.local/state/vllm-autoscale/gateway.sqlite3"
_RESERVE_DEFAULT = 1024  # tokens reserved for a request that sets no max_tokens


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


def _writer_id() -> str:
    # On Modal, the container's task id; locally the host and process. Plus a random part:
    # a restarted process is a new writer and never rewrites the old one's rows.
    base = os.environ.get("MODAL_TASK_ID") or f"{socket.gethostname()}-{os.getpid()}"
    return f"{base}-{uuid.uuid4().hex[:8]}"


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
        self.store = store or open_store(settings.state_url or DEFAULT_LOCAL_STATE)
        self.writer = _writer_id()
        self.limits = RateLimits()
        self.ledger = Ledger(self.store, self.writer, clock)
        self.cache = (
            ResponseCache(settings.cache_max_entries, settings.cache_max_bytes,
                          settings.cache_ttl, settings.cache_shared)
            if settings.cache_max_entries > 0 else None
        )  # fmt: skip
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._books: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._books_scheduled = False

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

    def authenticate(self, authorization: str) -> KeyRecord | None:
        """The key of an ``Authorization`` header value; None when it names no key. An open
        wrapper (no keys at all) takes everyone as ``anonymous``."""
        self._ensure_sync()
        if self.keys.open:
            return self.keys.anonymous
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.keys.find(token.strip())

    # -- before the GPU --------------------------------------------------------------------------

    def lookup(self, caller: KeyRecord, body: dict[str, Any], cache_control: str) -> CacheLookup:
        if self._books:
            self.keep_books()
        if self.cache is None:
            return CacheLookup(None)
        return self.cache.lookup(caller.name, body, cache_control)

    def admit(
        self, caller: KeyRecord, bodies: list[dict[str, Any]], stream: bool = False
    ) -> Ticket:
        """Check the key's budget and take its rate limits for ``bodies``; raise
        ``LimitExceeded`` (nothing taken) when one is over."""
        if self._books:
            self.keep_books()
        budget = caller.monthly_budget_usd
        if budget is not None and self.ledger.month_spend(caller.name) >= budget:
            raise LimitExceeded(caller.name, "monthly_budget_usd", budget,
                                seconds_to_next_month(self.clock()))  # fmt: skip
        tokens = sum(self.reserve(b) for b in bodies) if caller.tpm is not None else 0
        return self.limits.admit(caller, len(bodies), tokens, stream)

    def reserve(self, body: dict[str, Any]) -> int:
        """Tokens to hold for a request: its prompt (about 4 bytes a token) and its output cap."""
        prompt = len(canonical_json(body.get("messages") or [])) // 4 + 1
        output = body.get("max_tokens") or body.get("max_completion_tokens")
        return prompt + int(output or self.settings.default_max_tokens or _RESERVE_DEFAULT)

    # -- after the GPU ---------------------------------------------------------------------------

    def record(self, caller: KeyRecord, model: str, usage: Mapping[str, Any] | None,
               meta: Mapping[str, Any] | None = None, cache_hit: bool = False,
               requests: int = 1) -> None:  # fmt: skip
        """One answer in the ledger: served by the engine (``meta`` holds its GPU seconds,
        cold start and cost) or replayed from the cache."""
        meta = meta or {}
        cost = meta.get("cost") or {}
        self.ledger.record(
            caller.name, model, dict(usage or {}),
            gpu_seconds=float(cost.get("gpu_seconds") or 0.0),
            cold_start=bool(meta.get("cold_start")),
            cost_usd=float(cost.get("usd") or 0.0) + float(cost.get("cold_start_usd") or 0.0),
            cache_hit=cache_hit, requests=requests,
        )  # fmt: skip

    # -- key management (admin routes) -----------------------------------------------------------

    def create_key(self, entry: dict[str, Any]) -> tuple[str, KeyRecord]:
        """A new stored key: its secret (shown once) and its record. Blocking (the store)."""
        if self.keys.get(str(entry.get("name"))) is not None:
            raise KeyError(entry.get("name"))
        token = new_key()
        (record,) = parse_entries([{**entry, "key": token}], "store")
        self.store.put_many("keys", {record.name: record.to_doc()})
        self.keys.add_stored(record)
        return token, self.keys.get(record.name) or record

    def revoke_key(self, name: str) -> bool:
        """Remove a stored key; blocking. Other wrappers drop it at their next sync."""
        removed = self.store.delete("keys", name)
        self.keys.remove_stored(name)
        return removed

    # -- the state store -------------------------------------------------------------------------

    def sync_now(self) -> None:
        """Write this wrapper's ledger rows and limit counters; read everyone else's and the
        stored keys. Blocking: run it in a thread."""
        self.ledger.flush()
        self.ledger.refresh()
        self.store.put_many("limits", {self.writer: self.limits.publish()})
        stale = max(10.0, 5 * self.settings.state_sync_interval)
        peers = [doc for name, doc in self.store.items("limits") if name != self.writer]
        self.limits.absorb(peers, stale_after=stale)
        stored = [doc for _, doc in self.store.items("keys")]
        self.keys.set_stored(parse_entries(
            [{k: v for k, v in d.items() if k != "source"} for d in stored], "store"
        ))  # fmt: skip

    async def sync(self) -> None:
        await asyncio.to_thread(self.sync_now)

    def _ensure_sync(self) -> None:
        if self._task is None and not self._closed:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule
                self._task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:
                log.warning("state store sync failed; retrying", exc_info=True)
            await asyncio.sleep(self.settings.state_sync_interval)

    async def aclose(self) -> None:
        """Stop syncing and write everything once more (a restart loses no ledger row)."""
        self._closed = True
        self.keep_books()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self._final_flush)

    def _final_flush(self) -> None:
        self.ledger.flush()
        self.store.delete("limits", self.writer)  # its counts stop at once, not when stale
        self.store.close()
