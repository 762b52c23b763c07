"""The wrapper's streams over a fake transport, offline: SSE framing, heartbeats while the
first chunk is held back, the usage chunk and its cold-start facts, errors before and after
the first byte, and a client that goes away mid-stream."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from deploy.core.contract import Facts
from deploy.core.errors import EngineRequestError, EngineUnavailable, Overloaded
from tests.unit_tests.wrapper_fake import (
    KEY,
    MODEL,
    FakeTransport,
    app_for,
    assert_error,
    chunk,
    client_for,
    drop_stream,
    fresh_app,
    sse_data,
    sse_events,
    usage_chunk,
)

CHAT_URL = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
STREAM = {"messages": MESSAGES, "stream": True}
KEEP_ALIVE = ": keep-alive"
PROGRESS = ": vllm-autoscale-progress "


def _progress(event: str) -> dict | None:
    """A progress comment's JSON, or None for any other event."""
    return json.loads(event.removeprefix(PROGRESS)) if event.startswith(PROGRESS) else None


DONE = "data: [DONE]"


@pytest.fixture
def app_and_fake() -> tuple[FastAPI, FakeTransport]:
    return app_for()


@pytest.fixture
def fake(app_and_fake: tuple[FastAPI, FakeTransport]) -> FakeTransport:
    return app_and_fake[1]


@pytest.fixture
async def client(app_and_fake: tuple[FastAPI, FakeTransport]) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app_and_fake[0]) as c:
        yield c


def _texts(payloads: list[Any]) -> list[str]:
    return [
        p["choices"][0]["delta"]["content"]
        for p in payloads
        if isinstance(p, dict) and p.get("choices")
    ]


# -- framing --------------------------------------------------------------------------------------


async def test_a_stream_is_sse_chunks_then_done(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    response = await client.post(CHAT_URL, json=STREAM)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["x-request-id"]
    assert response.text.endswith("\n\n")
    events = sse_events(response.text)
    # The engine's usage chunk is not passed: the caller did not ask for it.
    assert events == [
        f"data: {json.dumps(chunk('Hel'), separators=(',', ':'))}",
        f"data: {json.dumps(chunk('lo'), separators=(',', ':'))}",
        DONE,
    ]
    assert fake.streams_closed == 1


async def test_the_engine_always_gets_usage_and_the_callers_stream_options(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    options = {"include_usage": False, "continuous_usage_stats": True}
    response = await client.post(
        CHAT_URL, json={**STREAM, "model": MODEL, "stream_options": options, "top_k": 2}
    )
    assert response.status_code == 200
    assert fake.stream_bodies == [
        {
            "messages": MESSAGES,
            "model": MODEL,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "top_k": 2,
        }
    ]
    assert not any("usage" in p for p in sse_data(sse_events(response.text)) if p != "[DONE]")


async def test_default_max_tokens_applies_to_streams() -> None:
    app, fake = app_for(default_max_tokens=32)
    async with client_for(app) as client:
        filled = await client.post(CHAT_URL, json=STREAM)
        kept = await client.post(CHAT_URL, json={**STREAM, "max_tokens": 4})
    assert filled.status_code == kept.status_code == 200
    assert [b["max_tokens"] for b in fake.stream_bodies] == [32, 4]


# -- the usage chunk ------------------------------------------------------------------------------


async def test_the_usage_chunk_carries_the_first_parts_cold_start_facts(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    fake.facts = Facts(cold_start=True, queue_wait_s=1.5)
    fake.stream_chunks = [chunk("a"), chunk("b"), usage_chunk(4, 2)]
    response = await client.post(
        CHAT_URL, json={**STREAM, "stream_options": {"include_usage": True}}
    )
    assert response.status_code == 200
    payloads = sse_data(sse_events(response.text))
    assert payloads[-1] == "[DONE]"
    assert _texts(payloads) == ["a", "b"]
    usage = payloads[-2]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    meta = usage["vllm_autoscale"]
    assert meta["cold_start"] is True and meta["queue_wait_ms"] == 1500.0
    assert meta["request_id"] == response.headers["x-request-id"]
    assert {"engine_ms", "cost"} <= set(meta)
    # Only the usage chunk carries the metadata; content chunks are vLLM's own.
    assert all("vllm_autoscale" not in p for p in payloads[:-2])


async def test_a_warm_stream_reports_no_cold_start(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    response = await client.post(
        CHAT_URL, json={**STREAM, "stream_options": {"include_usage": True}}
    )
    meta = sse_data(sse_events(response.text))[-2]["vllm_autoscale"]
    assert meta["cold_start"] is False and meta["queue_wait_ms"] == 0.0


async def test_stream_usage_is_counted_even_when_not_passed() -> None:
    app, fake = fresh_app()
    fake.stream_chunks = [chunk("a"), usage_chunk(10, 20)]
    async with client_for(app) as client:
        response = await client.post(CHAT_URL, json=STREAM)
        assert "usage" not in response.text
        metrics = (await client.get("/metrics")).text
    assert 'vllm_autoscale_tokens_total{direction="in"} 10.0' in metrics
    assert 'vllm_autoscale_tokens_total{direction="out"} 20.0' in metrics
    assert "vllm_autoscale_time_to_first_token_seconds_count 1.0" in metrics
    assert re.search(
        r'vllm_autoscale_requests_total\{route="/v1/chat/completions",status="200"\} 1\.0',
        metrics,
    )


# -- heartbeats -----------------------------------------------------------------------------------


async def test_progress_events_fill_the_wait_for_the_first_chunk() -> None:
    """While a cold engine starts, the stream's beats are progress comments (state, elapsed
    seconds, estimate); clients that know none of it skip them as SSE comments."""
    app, fake = app_for(heartbeat_interval=0.02, progress_interval=0.02)
    fake.facts = Facts(cold_start=True, queue_wait_s=0.1)
    fake.stream_delay = 0.1
    async with client_for(app) as client:
        response = await client.post(
            CHAT_URL, json={**STREAM, "stream_options": {"include_usage": True}}
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    beats = [i for i, e in enumerate(events) if _progress(e) is not None]
    first_data = next(i for i, e in enumerate(events) if e.startswith("data: "))
    assert beats and beats[0] == 0 and max(beats) < first_data
    assert len(beats) <= 10  # about one per interval of the 0.1 s wait, not a flood
    first = _progress(events[0])
    assert first is not None and first["object"] == "vllm_autoscale.progress"
    assert first["state"] == "cold" and first["model"] == fake.model_name
    assert first["eta_s"] is None  # no boot seen yet: no estimate made up
    assert KEEP_ALIVE not in events[first_data:]  # the stream went faster than the beat
    payloads = sse_data(events)
    assert _texts(payloads) == ["Hel", "lo"] and payloads[-1] == "[DONE]"
    # The facts still come from the first part, though heartbeats went before it.
    assert payloads[-2]["vllm_autoscale"]["cold_start"] is True
    assert payloads[-2]["vllm_autoscale"]["queue_wait_ms"] == 100.0


async def test_no_heartbeats_or_progress_when_the_engine_answers_at_once(
    client: httpx.AsyncClient,
) -> None:
    # heartbeat_interval is 10 s here: a prompt stream has no silence to fill.
    response = await client.post(CHAT_URL, json=STREAM)
    assert KEEP_ALIVE not in response.text and PROGRESS not in response.text


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "param", "retry_after"),
    [
        (Overloaded("queue full", retry_after=10), 503, None, "10"),
        (EngineRequestError("bad", status_code=400, param="x"), 400, "x", None),
        (EngineUnavailable("gone"), 503, None, None),
    ],
)
async def test_an_error_before_the_first_chunk_keeps_its_status(
    client: httpx.AsyncClient,
    fake: FakeTransport,
    exc: Exception,
    status: int,
    param: str | None,
    retry_after: str | None,
) -> None:
    fake.stream_error_at = 0
    fake.stream_error = exc
    response = await client.post(CHAT_URL, json=STREAM)
    error = assert_error(response, status, param=param)  # JSON, not a 200 event stream
    assert error["code"] == status and error["message"] == str(exc)
    assert response.headers.get("retry-after") == retry_after
    assert fake.streams_closed == 1


async def test_an_error_after_the_first_chunk_is_an_sse_error_event_then_done(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    fake.stream_chunks = [chunk("a"), chunk("b"), chunk("c")]
    fake.stream_error_at = 1
    response = await client.post(CHAT_URL, json=STREAM)
    assert response.status_code == 200  # already sent with the first chunk
    events = sse_events(response.text)
    assert len(events) == 3
    assert json.loads(events[0].removeprefix("data: ")) == chunk("a")
    assert json.loads(events[1].removeprefix("data: ")) == {
        "error": {
            "message": "engine connection lost",
            "type": "engine_unavailable",
            "param": None,
            "code": 503,
        }
    }
    assert events[2] == DONE  # the error event, then [DONE]; nothing after the error's chunk
    assert fake.streams_closed == 1


async def test_an_error_after_the_last_chunk_still_reaches_the_caller(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    fake.stream_chunks = [chunk("a")]
    fake.stream_error_at = 1  # after every chunk: the engine fails before it ends the stream
    fake.stream_error = EngineRequestError("cut", status_code=400, param="messages")
    response = await client.post(CHAT_URL, json=STREAM)
    payloads = sse_data(sse_events(response.text))
    assert _texts(payloads) == ["a"]
    assert payloads[1]["error"]["param"] == "messages" and payloads[1]["error"]["code"] == 400
    assert payloads[2] == "[DONE]" and len(payloads) == 3


async def test_an_error_during_the_heartbeats_is_an_sse_error_event() -> None:
    # Once a heartbeat has gone out the status is 200: a cold start that then fails (or
    # overflows the queue) can only be told in the stream.
    app, fake = app_for(heartbeat_interval=0.02, progress_interval=0.02)
    fake.stream_delay = 0.1
    fake.stream_error_at = 0
    fake.stream_error = Overloaded("still starting", retry_after=30)
    async with client_for(app) as client:
        response = await client.post(CHAT_URL, json=STREAM)
    assert response.status_code == 200
    events = sse_events(response.text)
    assert _progress(events[0]) is not None
    assert events[-1] == DONE
    assert json.loads(events[-2].removeprefix("data: "))["error"]["type"] == "overloaded"
    assert all(_progress(e) is not None for e in events[:-2])


async def test_a_stream_opens_within_half_a_second_whatever_the_heartbeat() -> None:
    """A cold stream's headers and a first progress event leave after half a second, not
    after the first heartbeat interval (10 s here)."""
    app, fake = app_for()
    fake.stream_delay = 0.8
    loop = asyncio.get_running_loop()
    began, started = loop.time(), []

    async def timed(scope, receive, send):  # type: ignore[no-untyped-def]
        async def send_timed(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                started.append(loop.time() - began)
            await send(message)

        await app(scope, receive, send_timed)

    asgi = httpx.ASGITransport(app=timed)
    async with httpx.AsyncClient(transport=asgi, base_url="http://wrapper") as client:
        response = await client.post(CHAT_URL, json=STREAM,
                                     headers={"authorization": f"Bearer {KEY}"})  # fmt: skip
    assert response.status_code == 200
    assert started[0] < 0.75  # the engine's first chunk came at 0.8 s
    assert _progress(sse_events(response.text)[0]) is not None


async def test_a_stream_for_another_model_never_reaches_the_engine(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    response = await client.post(CHAT_URL, json={**STREAM, "model": "other"})
    assert_error(response, 404, param="model")
    assert fake.stream_bodies == [] and fake.streams_closed == 0


# -- a client that goes away ----------------------------------------------------------------------


async def test_a_stream_left_after_its_role_chunk_books_the_prompt_it_read() -> None:
    """The engine's first part (the role, no text yet) comes once it has read the prompt: a
    client gone right then still owes the prompt's tokens (counted by the wrapper)."""
    app, fake = fresh_app()
    role = {"id": "c", "object": "chat.completion.chunk", "model": fake.model_name,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}  # fmt: skip
    fake.stream_chunks = [role, chunk("never")]
    fake.stream_hang_at = 1
    await asyncio.wait_for(drop_stream(app, STREAM, KEY, after=1), 5)
    async with client_for(app) as client:
        usage = (await client.get("/v1/usage")).json()["totals"]
    assert usage["requests"] == 1 and usage["estimated"] == 1
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] == 0


async def test_a_client_gone_mid_stream_closes_the_engine_stream() -> None:
    """Raw ASGI: the client disconnects after the first chunk while the engine hangs."""
    app, fake = app_for()
    fake.stream_chunks = [chunk("a"), chunk("never")]
    fake.stream_hang_at = 1
    sent = await asyncio.wait_for(drop_stream(app, STREAM, KEY, after=1), 2)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    bodies = b"".join(m.get("body", b"") for m in sent[1:])
    assert b'"a"' in bodies and b"never" not in bodies and b"[DONE]" not in bodies
    assert fake.streams_closed == 1  # the engine stream was closed, not left running
