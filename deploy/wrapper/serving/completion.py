"""A plain (not streamed) chat completion, from the response cache when it can be.

``Completions.complete`` answers a ``Completion``: vLLM's response body and its call's
``Meta``. The caller's limits are taken before the engine is asked; the books (limits
settled, ledger, metrics, cache) are kept once the answer is on its way (``Gateway.later``).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request

from ...core.contract import Facts
from ...gateway import Gateway, KeyRecord
from ...gateway.cache import CacheLookup
from ...gateway.gateway import Admission
from .books import Books, tokens
from .lifecycle import Lifecycle, cancel_on_disconnect
from .meta import Meta, call_meta, hit_meta
from .prepare import Preparer

__all__ = ["Completion", "Completions", "lookup"]


Completion = tuple[dict[str, Any], Meta]
"""A chat completion as the engine (or the cache) answered it, and its call's meta (a plain
tuple: the hot path allocates nothing more than it did)."""


def lookup(
    gateway: Gateway, request: Request, caller: KeyRecord, body: dict[str, Any]
) -> CacheLookup:
    """The response cache's answer for ``body`` (``Cache-Control`` honoured), or its key."""
    return gateway.lookup(caller, body, request.headers.get("cache-control", ""))


class Completions:
    def __init__(
        self, prep: Preparer, lifecycle: Lifecycle, books: Books, gateway: Gateway
    ) -> None:
        self.prep, self.lifecycle, self.books, self.gateway = prep, lifecycle, books, gateway

    async def complete(self, request: Request, body: dict[str, Any]) -> Completion:
        """One chat completion (from the cache when it can be) and its call's meta."""
        caller: KeyRecord = request.state.caller
        found = lookup(self.gateway, request, caller, body)
        if found.hit is not None:
            self.books.hit(caller, body.get("model"), found.hit)
            return found.hit, hit_meta(request)
        ticket = self.gateway.admit(caller, [body])
        served = self.prep.route(body)
        self.prep.salt(caller, body)
        started = time.perf_counter()
        try:
            with self.lifecycle:
                transport = await self.prep.pick(request, served.transport)
                reply = await cancel_on_disconnect(request, transport.chat(body))
        except BaseException:
            ticket.settle(None)
            raise
        by_engine = transport is served.transport
        meta = call_meta(request, reply.facts or Facts(), started, served.settings,
                         "miss" if found.store else "bypass",
                         "engine" if by_engine else "fallback")  # fmt: skip
        # The books (limits settled, ledger, metrics, cache): once the answer is on its way.
        model = body.get("model") if by_engine else transport.model_name
        engine = served.name if by_engine else None  # the model whose engine answered
        self.gateway.later(self._book, caller, ticket, reply.body, meta, model, engine, found,
                           reply.facts)  # fmt: skip
        return reply.body, meta

    def _book(
        self,
        caller: KeyRecord,
        ticket: Admission,
        answer: dict[str, Any],
        meta: Meta,
        model: str | None,
        engine: str | None,
        found: CacheLookup,
        facts: Facts | None,
    ) -> None:
        usage = answer.get("usage")
        ticket.settle(tokens(usage))
        self.books.served(caller, usage, meta, model, facts=facts, engine_model=engine)
        # Only the engine's answers are kept: a fallback's would outlive the cold start.
        if found.store and engine is not None and self.gateway.cache is not None:
            self.gateway.cache.put(found.key or "", answer, streamed=False)
