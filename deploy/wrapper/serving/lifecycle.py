"""A request's life in the wrapper: admission while draining, what is in flight, the drain.

``Lifecycle`` refuses new work once the wrapper is shutting down, counts the plain calls in
flight (``with lifecycle:``, no allocation per call) and holds the streams still open, so
that ``drain`` can wait for them and then end the ones left. ``cancel_on_disconnect`` frees
the engine when the client goes away first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from ...core.errors import ClientGone, EngineUnavailable
from .streaming import StreamPump

__all__ = ["Lifecycle", "cancel_on_disconnect"]

log = logging.getLogger("vllm_autoscale.wrapper")
T = TypeVar("T")


class Lifecycle:
    """One per app. ``with lifecycle:`` admits a call and counts it in flight till it ends."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self.streams: set[StreamPump] = set()

    def admit(self) -> None:
        """``EngineUnavailable`` (503, retry) once the wrapper is shutting down."""
        if self.draining:
            raise EngineUnavailable("the wrapper is shutting down; send the request again",
                                    retry_after=1)  # fmt: skip

    def __enter__(self) -> None:
        self.admit()
        self.in_flight += 1

    def __exit__(self, *exc: object) -> None:
        self.in_flight -= 1

    def opened(self, pump: StreamPump) -> None:
        self.streams.add(pump)

    def closed(self, pump: StreamPump) -> None:
        self.streams.discard(pump)

    async def drain(self, grace: float) -> None:
        """Stop taking work; let what is in flight finish within ``grace`` seconds; then end
        the streams still open with an error event and ``[DONE]`` (clients retry them)."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while (self.in_flight or self.streams) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.streams:
            log.warning("ending %d open stream(s) at shutdown", len(self.streams))
        for pump in list(self.streams):
            pump.interrupt(EngineUnavailable(
                "the wrapper shut down before the stream finished; send the request again",
                retry_after=1,
            ))  # fmt: skip


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first (frees the engine)."""
    handler = asyncio.current_task()
    gone = False

    async def watch() -> None:
        nonlocal gone
        # The body is already read, so the next message is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        if handler is not None:
            handler.cancel()

    # One watcher task; the work itself runs in the handler's task (no extra task per call).
    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            if handler is not None and hasattr(handler, "uncancel"):
                handler.uncancel()  # this cancel was ours, not the server's
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()
