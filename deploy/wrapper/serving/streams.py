"""A streamed chat completion: admitted, opened on the engine (or replayed from the cache).

``Streams.open`` answers a ``StreamRun`` (see stream_run.py) once the engine's first item
is in, or a ``Replay`` for a cache hit. An error before the first chunk (bad params,
overload) is raised, so it keeps its HTTP status: nothing was sent yet. A cold start holds
the first chunk back, and the stream then opens with heartbeats instead.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from fastapi import Request

from ...core.contract import ENDPOINT_KEY, EngineTransport, Reply
from ...gateway import Gateway, KeyRecord
from ...gateway.cache import CacheLookup, replay_chunks
from ...settings.settings import Settings
from ..metrics import Metrics
from .books import Books
from .completion import lookup
from .endpoints import RESPONSES
from .lifecycle import Lifecycle
from .meta import SSE_HEADERS, hit_meta
from .prepare import Preparer
from .stream_run import StreamParts, StreamRun

__all__ = ["Replay", "StreamRun", "Streams"]


class Replay(NamedTuple):
    """A cache hit as a stream: its events (then ``[DONE]``), all known already."""

    events: list[dict[str, Any]]
    headers: dict[str, str]


class Streams:
    def __init__(
        self,
        prep: Preparer,
        lifecycle: Lifecycle,
        books: Books,
        gateway: Gateway,
        metrics: Metrics,
        settings: Settings,
    ) -> None:
        self.prep, self.lifecycle, self.books, self.gateway = prep, lifecycle, books, gateway
        self.parts = StreamParts(lifecycle, books, gateway, metrics, settings.heartbeat_interval,
                                 settings.progress_interval)  # fmt: skip

    async def open(
        self, request: Request, body: dict[str, Any], cacheable: bool = True
    ) -> StreamRun | Replay:
        """The stream ``body`` asks for, its first item read (or its error raised).
        ``cacheable``: False for a stream the cache cannot replay (a text completion's)."""
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        caller: KeyRecord = request.state.caller
        found = lookup(self.gateway, request, caller, body) if cacheable else CacheLookup(None)
        if found.hit is not None:
            self.books.hit(caller, body.get("model"), found.hit)
            return replay(request, found.hit, wants_usage)
        responses = body.get(ENDPOINT_KEY) == RESPONSES  # its last event carries the usage
        if not responses:
            # Usage always travels from the engine (metrics and the ledger count it); callers
            # who did not ask for the usage chunk do not get it.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        self.lifecycle.admit()
        ticket = self.gateway.admit(caller, [body], stream=True)
        served = self.prep.route(body)
        self.prep.salt(caller, body)
        started = time.perf_counter()
        try:
            # A Responses stream never goes to the cold fallback (see direct.py).
            transport = served.transport if responses else await self.prep.pick(
                request, served.transport)  # fmt: skip
        except BaseException:
            ticket.settle(None)
            raise
        run = StreamRun(self.parts, request, ticket, started, wants_usage, found, transport,
                        served, body)  # fmt: skip
        try:
            first = await run.pump.get()
            if isinstance(first, Exception):  # failed before its first chunk
                raise first
        except BaseException:
            await run.abort()
            raise
        run.start(first, await cold_start(first, transport))
        return run


def replay(request: Request, completion: dict[str, Any], wants_usage: bool) -> Replay:
    """A cache hit as a stream: the same chunks' shape, no engine."""
    events: list[dict[str, Any]] = list(replay_chunks(completion))
    if wants_usage:
        events.append({"id": completion.get("id"), "object": "chat.completion.chunk",
                       "created": completion.get("created"), "model": completion.get("model"),
                       "choices": [], "usage": completion.get("usage"),
                       "vllm_autoscale": hit_meta(request)})  # fmt: skip
    return Replay(events, {**SSE_HEADERS, "x-cold-start": "false", "x-cache": "hit"})


async def cold_start(first: Any, transport: EngineTransport) -> bool:
    """Whether this stream waited for a start: its facts say, or, when it opens with a
    heartbeat (facts not known yet), the engine's state does."""
    if isinstance(first, Reply) and first.facts is not None:
        return first.facts.cold_start
    return (await transport.status()).state != "warm"
