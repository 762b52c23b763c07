"""The local transport's scale-to-zero life, offline: ``LocalTransport`` over an engine
stand-in whose start the test controls (the real engine is tested against vLLM elsewhere)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from deploy.core.errors import EngineStartError, EngineUnavailable, Overloaded
from deploy.engine.process import EngineConfig
from deploy.transports import local as transport_local
from deploy.transports.local import LocalTransport

BODY = {"messages": [{"role": "user", "content": "hi"}]}


class ControlledEngine:
    """Starts when the test says; answers at once once running."""

    def __init__(self) -> None:
        self.may_start = asyncio.Event()
        self.starts = 0
        self.stops = 0
        self.running = False
        self.fail_next_start: str | None = None
        self.healthy = True
        self.pid, self.base_url, self.exit_code = 4242, "http://engine", None

    async def start(self) -> None:
        self.starts += 1
        await self.may_start.wait()
        if self.fail_next_start:
            message, self.fail_next_start = self.fail_next_start, None
            raise EngineStartError(message)
        self.running = True

    def is_running(self) -> bool:
        return self.running

    def stop(self, grace: float = 15.0) -> None:
        self.stops += 1
        self.running = False

    async def aclose(self) -> None:
        return None

    async def health(self) -> bool:
        return self.running and self.healthy

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [{"message": {"content": "ok"}}], "echo": body}

    async def stream(self, body: dict[str, Any]):
        for text in ("a", "b"):
            yield {"choices": [{"delta": {"content": text}}]}

    async def batch(self, bodies, max_concurrency=None) -> list[dict[str, Any]]:
        return [await self.chat(b) for b in bodies]


def transport(**kwargs: Any) -> tuple[LocalTransport, ControlledEngine]:
    t = LocalTransport(EngineConfig(model="m", served_model_name="m"), **kwargs)
    engine = ControlledEngine()
    t.engine = engine  # type: ignore[assignment]
    return t, engine


async def _until(predicate, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_requests_during_a_start_share_one_start_and_report_their_wait() -> None:
    t, engine = transport(scaledown_window=None)
    calls = [asyncio.ensure_future(t.chat(BODY)) for _ in range(5)]
    await _until(lambda: (t.state, engine.starts) == ("starting", 1))
    assert (await t.status()).queue_depth == 5
    await asyncio.sleep(0.05)
    engine.may_start.set()
    replies = await asyncio.gather(*calls)
    assert engine.starts == 1 and t.cold_starts == 1 and t.state == "warm"
    for reply in replies:
        assert reply.facts is not None and reply.facts.cold_start
        assert reply.facts.queue_wait_s >= 0.05
    warm = await t.chat(BODY)
    assert warm.facts is not None and not warm.facts.cold_start and warm.facts.queue_wait_s == 0
    await t.aclose()


async def test_a_full_queue_is_refused_with_retry_after() -> None:
    t, engine = transport(scaledown_window=None, max_queue=2)
    waiting = [asyncio.ensure_future(t.chat(BODY)) for _ in range(2)]
    await _until(lambda: engine.starts == 1)
    await asyncio.sleep(0.01)
    assert (await t.status()).queue_depth == 2
    with pytest.raises(Overloaded) as refused:
        await t.chat(BODY)
    assert refused.value.retry_after and refused.value.status_code == 503
    engine.may_start.set()
    assert len(await asyncio.gather(*waiting)) == 2
    await t.aclose()


async def test_a_start_that_outlasts_the_queue_timeout_is_a_503() -> None:
    t, engine = transport(scaledown_window=None, queue_timeout=0.05)
    with pytest.raises(Overloaded, match="still starting"):
        await t.chat(BODY)
    assert engine.starts == 1 and t.state == "starting"  # the start goes on for later calls
    engine.may_start.set()
    assert (await t.chat(BODY)).body["choices"]
    await t.aclose()


async def test_an_idle_engine_stops_after_the_window_and_status_never_wakes_it() -> None:
    t, engine = transport(scaledown_window=0.05)
    engine.may_start.set()
    await t.chat(BODY)
    await _until(lambda: t.state == "cold")
    assert engine.stops >= 1 and not engine.running
    for _ in range(3):
        assert (await t.status()).state == "cold"
    assert engine.starts == 1
    await t.aclose()


async def test_a_failed_start_backs_off_then_a_fixed_engine_recovers(monkeypatch) -> None:
    monkeypatch.setattr(transport_local, "RESTART_BACKOFF_S", 0.2)
    t, engine = transport(scaledown_window=None)
    engine.fail_next_start = "ValueError: KV cache too small"
    engine.may_start.set()
    with pytest.raises(EngineStartError) as first:
        await t.chat(BODY)
    assert first.value.retry_after == pytest.approx(0.2)
    status = await t.status()
    assert status.state == "failed" and status.last_error == "ValueError: KV cache too small"
    assert status.extra["next_start_at"] > time.time() and status.extra["failed_starts"] == 1
    with pytest.raises(EngineStartError, match="next start attempt in 1 s") as backing_off:
        await t.chat(BODY)  # within the backoff: refused at once, no relaunch
    assert backing_off.value.retry_after == 1 and engine.starts == 1
    assert (await t.warmup()).state == "failed" and engine.starts == 1
    await asyncio.sleep(0.25)
    assert (await t.chat(BODY)).body["choices"] and engine.starts == 2  # fixed: recovers
    status = await t.status()
    assert status.last_error is None and status.extra["failed_starts"] == 0
    await t.aclose()


async def test_backoff_doubles_up_to_its_cap(monkeypatch) -> None:
    monkeypatch.setattr(transport_local, "RESTART_BACKOFF_S", 0.01)
    monkeypatch.setattr(transport_local, "RESTART_BACKOFF_CAP_S", 0.03)
    t, engine = transport(scaledown_window=None)
    engine.may_start.set()
    delays = []
    for _ in range(4):
        engine.fail_next_start = "RuntimeError: no"
        with pytest.raises(EngineStartError) as failed:
            await t.chat(BODY)
        delays.append(failed.value.retry_after)
        await asyncio.sleep(0.035)
    assert delays == pytest.approx([0.01, 0.02, 0.03, 0.03])
    await t.aclose()


async def test_an_unhealthy_engine_is_restarted_and_the_error_clears_on_success() -> None:
    t, engine = transport(scaledown_window=None)
    engine.may_start.set()
    await t.chat(BODY)

    async def broken(body: dict[str, Any]) -> dict[str, Any]:
        raise EngineUnavailable("the engine failed: EngineDeadError", retry_after=5)

    engine.healthy, engine.chat = False, broken  # type: ignore[method-assign]
    with pytest.raises(EngineUnavailable):
        await t.chat(BODY)
    assert engine.stops == 1 and t.state == "cold"  # restarted on the next request
    assert (await t.status()).last_error == "the engine failed: EngineDeadError"
    engine.healthy = True
    del engine.chat  # the class's working chat again
    assert (await t.chat(BODY)).facts.cold_start  # type: ignore[union-attr]
    assert (await t.status()).last_error is None
    await t.aclose()


async def test_a_dead_engine_reads_cold_and_restarts_on_demand() -> None:
    t, engine = transport(scaledown_window=None)
    engine.may_start.set()
    await t.chat(BODY)
    engine.running = False  # the process died
    assert (await t.status()).state == "cold"
    assert (await t.chat(BODY)).facts.cold_start  # type: ignore[union-attr]
    assert engine.starts == 2
    await t.aclose()


async def test_stream_parts_carry_facts_on_the_first_only() -> None:
    t, engine = transport(scaledown_window=None)
    engine.may_start.set()
    parts = [part async for part in t.stream(BODY)]
    assert [p.body["choices"][0]["delta"]["content"] for p in parts] == ["a", "b"]
    assert parts[0].facts is not None and parts[0].facts.cold_start
    assert parts[1].facts is None
    batch = await t.batch([BODY, BODY])
    assert len(batch.body) == 2 and batch.facts is not None and not batch.facts.cold_start
    await t.aclose()


async def test_warmup_returns_at_once_and_starts_the_engine() -> None:
    t, engine = transport(scaledown_window=None)
    status = await t.warmup()
    assert status.state == "starting" and engine.starts == 1
    engine.may_start.set()
    await _until(lambda: t.state == "warm")
    await t.aclose()


# -- warm schedule --------------------------------------------------------------------------------


class Clock:
    """Unix time the test sets."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _utc(day: int, hour: int, minute: int = 0) -> float:
    import datetime as dt

    return dt.datetime(2026, 11, day, hour, minute, tzinfo=dt.timezone.utc).timestamp()


async def test_a_warm_window_starts_the_engine_holds_it_and_lets_it_go_after() -> None:
    from deploy.core.schedule import WarmSchedule

    clock = Clock(_utc(25, 8, 59))  # a Wednesday, a minute before the window
    t, engine = transport(
        scaledown_window=0.05, schedule=WarmSchedule.parse("0 9 * * mon-fri 9h"), clock=clock
    )
    engine.may_start.set()
    assert await t.apply_schedule() is False and engine.starts == 0
    clock.now = _utc(25, 9, 0)
    assert await t.apply_schedule() is True
    await _until(lambda: t.state == "warm")
    assert (await t.status()).extra["warm_schedule"]["open"] is True
    await asyncio.sleep(0.3)  # six scaledown windows, no request: the window holds it
    assert t.state == "warm" and engine.stops == 0
    clock.now = _utc(25, 18, 0)
    assert await t.apply_schedule() is False
    await _until(lambda: t.state == "cold")  # then the idle countdown applies
    described = (await t.status()).extra["warm_schedule"]
    assert described["open"] is False and described["next_change"].startswith("2026-11-26T09:00")
    assert engine.starts == 1 and engine.stops == 1


async def test_outside_any_window_the_schedule_starts_nothing() -> None:
    from deploy.core.schedule import WarmSchedule

    clock = Clock(_utc(28, 10, 0))  # a Saturday
    t, engine = transport(
        scaledown_window=0.05, schedule=WarmSchedule.parse("0 9 * * mon-fri 9h"), clock=clock
    )
    engine.may_start.set()
    assert await t.apply_schedule() is False
    await asyncio.sleep(0.05)
    assert engine.starts == 0 and t.state == "cold"
