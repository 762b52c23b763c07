"""Streaming: the pump that reads an engine stream with heartbeats, and its SSE response.

A stream waiting for a cold engine sends SSE comment heartbeats (``: keep-alive``) so that
proxies and clients keep the connection; the pump reads the engine in one task into a
bounded queue and puts a heartbeat in whenever ``interval`` passes without an item.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ...core import sse as codec

__all__ = [
    "DONE",
    "END",
    "HEARTBEAT",
    "KEEP_ALIVE",
    "PumpedStream",
    "StreamPump",
    "sse",
    "sse_stream",
]

HEARTBEAT, END = object(), object()
# The wire format is the one codec's (deploy/core/sse.py); these names are the wrapper's.
DONE = codec.DONE
KEEP_ALIVE = codec.KEEP_ALIVE


def sse(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event carrying ``payload``."""
    return codec.encode(payload)


def sse_stream(events: list[dict[str, Any]], headers: dict[str, str]) -> StreamingResponse:
    """A stream whose events are all known already (a cache replay), then ``[DONE]``."""

    async def body() -> AsyncIterator[bytes]:
        for event in events:
            yield codec.encode(event)
        yield codec.DONE

    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


class StreamPump:
    """Reads a stream in one task into a queue, and puts ``HEARTBEAT`` in whenever
    ``interval`` passes without an item: the reader awaits one queue, with no task or timer
    per chunk. Items are chunks, then ``END``, or the exception that ended the stream.

    Before the first item (a cold engine), the beat is faster: the first after ``open_after``
    seconds (so the response's headers leave at once), then every ``waiting_interval``: the
    stream's progress events ride on them."""

    def __init__(
        self,
        source: AsyncIterator[Any],
        interval: float,
        waiting_interval: float | None = None,
        open_after: float | None = None,
    ) -> None:
        self._source, self._interval = source, interval
        self._waiting_interval = min(interval, waiting_interval or interval)
        self._loop = asyncio.get_running_loop()
        # Bounded: a slow reader holds the engine stream back instead of buffering it all.
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        self._last = self._loop.time()
        self._started = False
        self._task = asyncio.ensure_future(self._run())
        self._first = min(self._waiting_interval, open_after or self._waiting_interval)
        self._ticked = False
        self._timer = self._loop.call_at(self._last + self._first, self._tick)
        self._interrupted: Exception | None = None

    async def _run(self) -> None:
        try:
            async for item in self._source:
                self._last = self._loop.time()
                self._started = True
                await self._queue.put(item)
            end: Any = END
        except Exception as exc:  # handed to the reader, which decides what the caller sees
            end = exc
        await self._queue.put(end)

    def _tick(self) -> None:
        now = self._loop.time()
        interval = self._interval if self._started else self._waiting_interval
        if now >= self._last + (interval if self._ticked else self._first) - 1e-3:
            if self._queue.empty():
                self._queue.put_nowait(HEARTBEAT)
            self._last = now
        self._ticked = True
        self._timer = self._loop.call_at(self._last + interval, self._tick)

    async def get(self) -> Any:
        if self._interrupted is not None and self._queue.empty():
            return self._interrupted
        return await self._queue.get()

    def interrupt(self, error: Exception) -> None:
        """End the stream early with ``error`` (the wrapper is shutting down): the engine
        read stops; the reader gets what was already read, then ``error``."""
        self._interrupted = error
        self._timer.cancel()
        self._task.cancel()
        if not self._queue.full():
            self._queue.put_nowait(error)  # wakes a reader waiting on an empty queue

    async def aclose(self) -> None:
        self._timer.cancel()
        if not self._task.done():
            self._task.cancel()
            # The source cannot be closed while a read of it still runs.
            with contextlib.suppress(BaseException):
                await self._task
        await self._source.aclose()  # type: ignore[attr-defined]


class PumpedStream(StreamingResponse):
    """A streaming response that stops its pump however it ends: finished, failed, or the
    client gone before the first byte (when the body iterator never even starts)."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        pump: StreamPump,
        on_close: Callable[[], Awaitable[None]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(content, **kwargs)
        self._pump, self._on_close = pump, on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._pump.aclose()  # first: the engine stream is read no further
            finally:
                if self._on_close is not None:
                    await self._on_close()
