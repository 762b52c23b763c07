"""One stream from its first chunk to its end: relayed as SSE, tallied, booked, cached.

``StreamRun`` is what the serving layer answers a stream with: its SSE ``events`` (bytes),
the ``pump`` that reads the engine (heartbeats while a cold engine starts), the ``headers``
known before the first chunk, and ``closed``, to await however the stream ends. The engine's
usage chunk books the stream; a stream that ends without it (the client gone, a failure
part-way, a cold fallback that sends no usage) is booked from what the tally saw.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from ...core import sse as codec
from ...core.contract import EngineTransport, Facts
from ...core.errors import EngineError
from ...gateway import Gateway, KeyRecord
from ...gateway.cache import CacheLookup, StreamRecorder
from ...gateway.gateway import Admission
from ..metrics import Metrics
from .accounting import RESPONSE_ENDS, StreamTally, estimate_usage, rough_usage, usage_of
from .books import Books, tokens
from .lifecycle import Lifecycle
from .meta import Meta, call_meta, stream_headers
from .progress import OPEN_AFTER_S, progress_event
from .registry import ServedModel
from .streaming import DONE, END, HEARTBEAT, KEEP_ALIVE, StreamPump, sse
from .tool_stream import ToolCallAssembler, wants_tool_assembly

__all__ = ["StreamParts", "StreamRun"]

log = logging.getLogger("vllm_autoscale.wrapper")


@dataclass(frozen=True)
class StreamParts:
    """What every stream of an app shares."""

    lifecycle: Lifecycle
    books: Books
    gateway: Gateway
    metrics: Metrics
    heartbeat_interval: float
    progress_interval: float


class StreamRun:
    """One admitted stream, its engine read by ``pump`` from the start."""

    events: AsyncIterator[bytes]
    """The SSE body, from ``start`` on."""
    headers: dict[str, str]

    def __init__(
        self,
        parts: StreamParts,
        request: Request,
        ticket: Admission,
        started: float,
        wants_usage: bool,
        lookup: CacheLookup,
        transport: EngineTransport,
        served: ServedModel,
        body: dict[str, Any],
    ) -> None:
        self.parts, self.request, self.ticket, self.started = parts, request, ticket, started
        self.caller: KeyRecord = request.state.caller
        self.wants_usage, self.lookup, self.body = wants_usage, lookup, body
        self.booked = False
        self.counter, self.settings = served.counter, served.settings
        by_engine = transport is served.transport
        self.served_by = "engine" if by_engine else "fallback"
        self.model = body.get("model") if by_engine else transport.model_name
        self.engine_model = served.name if by_engine else None  # for the GPU up-time meter
        self.cache = "miss" if lookup.store else "bypass"
        # Only the engine's answers are kept: a fallback's would outlive the cold start.
        self.recorder = StreamRecorder() if lookup.store and by_engine else None
        # Tool calls go out whole (see tool_stream.py); a stream without tools is not touched.
        self.tools = ToolCallAssembler() if wants_tool_assembly(body) else None
        # The tally sees every chunk the engine sends, ahead of the client: a stream that ends
        # without the engine's usage is still booked (_book_unfinished).
        self.tally = StreamTally()
        self.transport, self.progress_model = transport, served.name
        self.pump = StreamPump(self.tally.watch(transport.stream(body)), parts.heartbeat_interval,
                               parts.progress_interval, OPEN_AFTER_S)  # fmt: skip
        parts.lifecycle.opened(self.pump)

    async def abort(self) -> None:
        """The stream failed before its first chunk: nothing was sent, nothing is booked."""
        self.parts.lifecycle.closed(self.pump)
        self.ticket.settle(None)
        await self.pump.aclose()

    def start(self, first: Any, cold: bool) -> None:
        """Ready to send, from its ``first`` item; ``cold``: it waited for an engine start."""
        self.headers = stream_headers(cold, self.cache, self.served_by)
        self.events = self._relay(first)

    async def closed(self) -> None:
        """However the stream ended: booked if it was not yet, the caller's limits given back."""
        self.parts.lifecycle.closed(self.pump)
        try:
            if not self.booked:  # ended before the engine's usage reached the books
                await self._book_unfinished()
        finally:
            self.ticket.settle(None)  # no-op once booked

    async def _relay(self, item: Any) -> AsyncIterator[bytes]:
        first_token, tools, pump = True, self.tools, self.pump
        waiting = True  # no part of the answer yet: heartbeats carry the cold start's progress
        while item is not END:
            if item is HEARTBEAT:
                yield await self._progress() if waiting else KEEP_ALIVE
            elif isinstance(item, EngineError):
                log.warning("stream failed: %s", item.message,
                            extra={"request_id": self.request.state.request_id})  # fmt: skip
                yield sse(item.to_body())
                break
            elif isinstance(item, Exception):
                raise item
            else:  # its facts are the tally's (it saw this part first)
                waiting = False
                chunk = item.body if tools is None else tools.feed(item.body)
                if chunk is None:  # a tool call's piece, held until the call is whole
                    item = await pump.get()
                    continue
                if self.recorder is not None:
                    self.recorder.feed(chunk)
                if first_token and chunk.get("choices"):
                    self.parts.metrics.ttft.observe(time.perf_counter() - self.started)
                    first_token = False
                usage = usage_of(chunk)
                if usage is not None and chunk.get("type") in RESPONSE_ENDS:
                    self._book(usage)  # a Responses stream's last event: always relayed
                    yield sse(chunk)
                elif usage is not None:
                    meta = self._book(usage)
                    if self.wants_usage:
                        chunk["vllm_autoscale"] = meta
                        yield sse(chunk)
                else:
                    yield sse(chunk)
            item = await pump.get()
        else:
            last = tools.finish() if tools is not None else None
            if last is not None:  # the engine ended without a finish reason
                yield sse(last)
            self._store_in_cache()
        yield DONE

    async def _progress(self) -> bytes:
        """A progress event (an SSE comment) while the stream waits for its engine."""
        try:
            status = await self.transport.status()
        except Exception:  # a status that fails is no reason to end the stream
            return KEEP_ALIVE
        waited = time.perf_counter() - self.started
        event = progress_event(status, self.parts.gateway, self.progress_model, waited)
        return codec.progress(event)

    def _book(self, usage: dict[str, Any], estimated: bool = False) -> Meta:
        """The stream in the books, kept once (limits settled, ledger, metrics); its meta."""
        ended = self.tally.ended  # set once the engine stream closed (a late booking)
        meta = call_meta(self.request, self.tally.facts or Facts(), self.started, self.settings,
                         self.cache, self.served_by, ended[0] if ended else None)  # fmt: skip
        self.ticket.settle(tokens(usage))
        self.parts.books.served(
            self.caller,
            usage,
            meta,
            self.model,
            estimated=estimated,
            facts=self.tally.facts,
            engine_model=self.engine_model,
            ended_at=ended[1] if ended else None,
        )
        self.booked = True
        return meta

    async def _book_unfinished(self) -> None:
        """Book a stream that ended without its usage reaching the books: the engine's usage
        if the tally saw it, else the tokens counted from what the engine sent (estimated)."""
        tally = self.tally
        # The engine's first part comes once it has read the prompt: from then on the
        # prompt's tokens were served, even if the client left before any text.
        if tally.usage is None and not tally.chunks_seen:
            return  # the engine never answered: nothing was served
        usage, estimated = tally.usage, tally.usage is None
        if usage is None:
            try:
                usage = await estimate_usage(self.body, tally, self.counter)
            except asyncio.CancelledError:  # shutting down: book it roughly, now
                self._book_estimate(rough_usage(self.body, tally), True)
                raise
        self._book_estimate(usage, estimated)

    def _book_estimate(self, usage: dict[str, Any], estimated: bool) -> None:
        self._book(usage, estimated)
        if estimated:
            log.info("booked an unfinished stream's tokens as counted by the wrapper: %s",
                     usage, extra={"request_id": self.request.state.request_id})  # fmt: skip

    def _store_in_cache(self) -> None:
        """A stream that ran to its end fills the cache as a plain request would."""
        cache, key = self.parts.gateway.cache, self.lookup.key
        if self.recorder is not None and cache is not None and key:
            cache.put(key, self.recorder.completion(), streamed=True)
