"""Many chat completions in one engine call (``POST /v1/chat/completions/batch``).

A failed item keeps its error in its slot. The whole batch is admitted (or refused) at
once, goes to one model (or its adapters), and does not use the response cache.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request

from ...core.contract import BatchResults, Facts
from ...core.errors import EngineError, InvalidRequest
from ...gateway import Gateway, KeyRecord
from ..protocol import BatchRequest
from .books import Books
from .completion import Completion
from .lifecycle import Lifecycle, cancel_on_disconnect
from .meta import Meta, call_meta
from .prepare import Preparer
from .registry import ServedModel

__all__ = ["Batches"]


class Batches:
    def __init__(
        self, prep: Preparer, lifecycle: Lifecycle, books: Books, gateway: Gateway
    ) -> None:
        self.prep, self.lifecycle, self.books, self.gateway = prep, lifecycle, books, gateway

    async def run(self, request: Request, req: BatchRequest) -> Completion:
        """The batch's answer (``batch.chat.completion``: every item in its slot) and its
        call's meta, which each item's answer carries too."""
        caller: KeyRecord = request.state.caller
        bodies = [self.prep.engine_body(r, f"requests.{i}.") for i, r in enumerate(req.requests)]
        served = self._one_model(bodies)
        ticket = self.gateway.admit(caller, bodies)
        for body in bodies:
            self.prep.salt(caller, body)
        started = time.perf_counter()
        try:
            with self.lifecycle:
                reply = await cancel_on_disconnect(
                    request, served.transport.batch(bodies, req.max_concurrency)
                )
        except BaseException:
            ticket.settle(None)
            raise
        meta = call_meta(request, reply.facts or Facts(), started, served.settings)
        items = _items(reply.body, meta)
        answers = [item.get("response") for item in items]
        self.books.batch(caller, ticket, bodies, answers, meta, served.name, reply.facts)
        return {"object": "batch.chat.completion", "results": items,
                "vllm_autoscale": meta}, meta  # fmt: skip

    def _one_model(self, bodies: list[dict[str, Any]]) -> ServedModel:
        """One batch is one engine call: its requests name one model (or its adapters)."""
        first = self.prep.route(bodies[0])
        for i, body in enumerate(bodies[1:], start=1):
            if self.prep.route(body) is not first:
                raise InvalidRequest(
                    f"a batch goes to one model: requests.{i}.model names another than "
                    f"requests.0.model ({first.name!r}); send one batch per model",
                    f"requests.{i}.model",
                )
        return first


def _items(results: BatchResults, meta: Meta) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, result in enumerate(results):
        if isinstance(result, EngineError):
            out.append({"index": i, "status_code": result.status_code, **result.to_body()})
        else:
            result["vllm_autoscale"] = meta  # each answer carries the call's facts
            out.append({"index": i, "status_code": 200, "response": result})
    return out
