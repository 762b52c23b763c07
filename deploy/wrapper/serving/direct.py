"""Calls that go straight to their model's engine: embeddings and Responses.

One engine call per request, kept in the books like a chat: the caller's limits taken before
the engine is asked and settled with the engine's usage (a Responses answer's counted as a
chat's). Never from the cold fallback: another model's vectors would not be comparable with
this one's (a vector store mixing them silently breaks), and a fallback provider need not
serve Responses. Not cached: an embedding is milliseconds once warm, and a Responses answer
carries ids of its own.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request

from ...core.contract import ENDPOINT_KEY, Facts
from ...gateway import Gateway, KeyRecord
from ...gateway.gateway import Admission
from .accounting import as_chat_usage
from .books import Books, tokens
from .completion import Completion
from .endpoints import RESPONSES
from .lifecycle import Lifecycle, cancel_on_disconnect
from .meta import Meta, call_meta
from .prepare import Preparer

__all__ = ["DirectCalls"]


class DirectCalls:
    def __init__(
        self, prep: Preparer, lifecycle: Lifecycle, books: Books, gateway: Gateway
    ) -> None:
        self.prep, self.lifecycle, self.books, self.gateway = prep, lifecycle, books, gateway

    async def call(self, request: Request, body: dict[str, Any]) -> Completion:
        """The engine's answer to ``body`` (its ``model`` and route resolved) and the call's
        meta."""
        caller: KeyRecord = request.state.caller
        ticket = self.gateway.admit(caller, [body])
        served = self.prep.route(body)
        if body.get(ENDPOINT_KEY) == RESPONSES:  # a generation shares vLLM's prefix cache
            self.prep.salt(caller, body)
        started = time.perf_counter()
        try:
            with self.lifecycle:
                reply = await cancel_on_disconnect(request, served.transport.chat(body))
        except BaseException:
            ticket.settle(None)
            raise
        meta = call_meta(request, reply.facts or Facts(), started, served.settings)
        self.gateway.later(self._book, caller, ticket, reply.body, meta, served.name, reply.facts)
        return reply.body, meta

    def _book(
        self,
        caller: KeyRecord,
        ticket: Admission,
        answer: dict[str, Any],
        meta: Meta,
        model: str,
        facts: Facts | None,
    ) -> None:
        usage = as_chat_usage(answer.get("usage"))
        ticket.settle(tokens(usage))
        self.books.served(caller, usage, meta, model, facts=facts, engine_model=model)
