"""The wrapper's stream pump: order, heartbeats only in silences, errors handed over, and a
clean stop that closes the engine stream even while a read of it is pending."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from deploy.core.errors import EngineUnavailable
from deploy.wrapper.serving.streaming import END as _END
from deploy.wrapper.serving.streaming import HEARTBEAT as _HEARTBEAT
from deploy.wrapper.serving.streaming import StreamPump as _StreamPump


async def _drain(pump: _StreamPump) -> list[object]:
    items = []
    while (item := await pump.get()) is not _END and not isinstance(item, Exception):
        items.append(item)
    return [*items, item]


async def test_items_in_order_and_heartbeats_only_in_silences() -> None:
    async def source() -> AsyncIterator[dict[str, int]]:
        yield {"n": 1}
        await asyncio.sleep(0.25)  # a silence longer than the interval
        yield {"n": 2}
        yield {"n": 3}

    pump = _StreamPump(source(), interval=0.1)
    items = await _drain(pump)
    await pump.aclose()
    chunks = [i for i in items if isinstance(i, dict)]
    assert chunks == [{"n": 1}, {"n": 2}, {"n": 3}] and items[-1] is _END
    beats = [i for i, item in enumerate(items) if item is _HEARTBEAT]
    assert 1 <= len(beats) <= 3 and all(0 < i < items.index({"n": 2}) for i in beats)


async def test_an_error_ends_the_stream_and_reaches_the_reader() -> None:
    async def source() -> AsyncIterator[dict[str, int]]:
        yield {"n": 1}
        raise EngineUnavailable("engine gone")

    pump = _StreamPump(source(), interval=10)
    items = await _drain(pump)
    await pump.aclose()
    assert items[0] == {"n": 1} and isinstance(items[-1], EngineUnavailable)


async def test_aclose_stops_a_pending_read_and_closes_the_source() -> None:
    closed = asyncio.Event()

    async def source() -> AsyncIterator[dict[str, int]]:
        try:
            yield {"n": 1}
            await asyncio.sleep(3600)  # an engine that never answers again
            yield {"n": 2}
        finally:
            closed.set()

    pump = _StreamPump(source(), interval=10)
    assert await pump.get() == {"n": 1}
    await asyncio.wait_for(pump.aclose(), 5)
    assert closed.is_set()
    await pump.aclose()  # twice is harmless


async def test_a_slow_reader_holds_the_source_back() -> None:
    backlog, produced = 200, 0

    async def source() -> AsyncIterator[dict[str, int]]:
        nonlocal produced
        for n in range(backlog):
            produced += 1
            yield {"n": n}

    pump = _StreamPump(source(), interval=10)
    await asyncio.sleep(0.05)  # the reader does not read
    assert produced < backlog  # bounded queue: the engine stream waits for the reader
    assert [i["n"] for i in (await _drain(pump))[:-1]] == list(range(backlog))
    await pump.aclose()
