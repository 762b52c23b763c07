"""The cold fallback, offline: which requests go to it by policy, that the engine is woken
meanwhile, that streams pass through it, that its answers are never cached and are labelled;
and the fallback's HTTP client over a mock endpoint."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from deploy.errors import EngineRequestError, EngineUnavailable
from deploy.fallback import FallbackTransport
from deploy.wrapper import create_app
from tests.unit_tests.wrapper_fake import (
    FakeTransport,
    chunk,
    client_for,
    completion,
    make_settings,
    sse_data,
    sse_events,
)

CHAT = "/v1/chat/completions"
ASK = {"messages": [{"role": "user", "content": "hi"}]}


def with_fallback(
    policy: str = "always", **settings: Any
) -> tuple[FastAPI, FakeTransport, FakeTransport]:
    engine, fallback = FakeTransport(), FakeTransport(model_name="gpt-fallback")
    fallback.chat_result = completion("from the fallback")
    fallback.engine_status.state = "warm"
    config = make_settings(cold_fallback_url="http://fallback/v1", cold_fallback_policy=policy,
                           **settings)  # fmt: skip
    return create_app(engine, config, fallback=fallback), engine, fallback


async def test_while_cold_requests_go_to_the_fallback_and_the_engine_is_woken() -> None:
    app, engine, fallback = with_fallback()
    async with client_for(app) as client:
        first = await client.post(CHAT, json=ASK)
        second = await client.post(CHAT, json=ASK)
        status = (await client.get("/status")).json()
    for response in (first, second):
        assert response.status_code == 200 and response.headers["x-served-by"] == "fallback"
        assert response.json()["choices"][0]["message"]["content"] == "from the fallback"
        meta = response.json()["vllm_autoscale"]
        assert meta["served_by"] == "fallback" and meta["cost"]["usd"] == 0
    assert engine.chat_bodies == [] and len(fallback.chat_bodies) == 2
    assert engine.warmups == 1  # woken once, not once per request
    assert status["cold_fallback"] == {"policy": "always", "model": "gpt-fallback", "served": 2}


async def test_once_warm_everything_goes_back_to_the_engine() -> None:
    app, engine, _ = with_fallback()
    async with client_for(app) as client:
        assert (await client.post(CHAT, json=ASK)).headers["x-served-by"] == "fallback"
        engine.engine_status.state = "warm"
        back = await client.post(CHAT, json=ASK)
    assert back.headers["x-served-by"] == "engine" and len(engine.chat_bodies) == 1


async def test_the_header_policy_falls_back_only_for_requests_that_allow_it() -> None:
    app, engine, fallback = with_fallback("header")
    async with client_for(app) as client:
        waits = await client.post(CHAT, json=ASK)
        allowed = await client.post(CHAT, json=ASK, headers={"X-Allow-Fallback": "true"})
    assert waits.headers["x-served-by"] == "engine" and len(engine.chat_bodies) == 1
    assert allowed.headers["x-served-by"] == "fallback" and len(fallback.chat_bodies) == 1


async def test_the_after_policy_waits_then_falls_back_or_takes_the_engine_if_it_wakes() -> None:
    app, engine, _ = with_fallback("after", cold_fallback_after=0.3)
    async with client_for(app) as client:
        late = await client.post(CHAT, json=ASK)

        async def wake() -> None:
            await asyncio.sleep(0.1)
            engine.engine_status.state = "warm"

        waker = asyncio.create_task(wake())
        in_time = await client.post(CHAT, json=ASK)
        await waker
    assert late.headers["x-served-by"] == "fallback"
    assert in_time.headers["x-served-by"] == "engine"


async def test_a_stream_passes_through_the_fallback() -> None:
    app, engine, fallback = with_fallback()
    fallback.stream_chunks = [chunk("fall"), chunk("back")]
    async with client_for(app) as client:
        response = await client.post(CHAT, json={**ASK, "stream": True})
    assert response.headers["x-served-by"] == "fallback"
    events = sse_data(sse_events(response.text))
    text = "".join(e["choices"][0]["delta"]["content"] for e in events[:-1] if e["choices"])
    assert text == "fallback" and events[-1] == "[DONE]"
    assert engine.stream_bodies == [] and len(fallback.stream_bodies) == 1


async def test_a_fallback_answer_is_never_replayed_from_the_cache() -> None:
    app, engine, _ = with_fallback(cache_max_entries=8)
    deterministic = {**ASK, "temperature": 0}
    async with client_for(app) as client:
        cold = await client.post(CHAT, json=deterministic)
        engine.engine_status.state = "warm"
        warm = await client.post(CHAT, json=deterministic)
    assert cold.headers["x-served-by"] == "fallback"
    assert warm.headers["x-cache"] == "miss" and warm.headers["x-served-by"] == "engine"


async def test_batches_wait_for_the_engine_and_the_ledger_names_the_fallback_model() -> None:
    app, engine, _ = with_fallback()
    async with client_for(app) as client:
        batch = await client.post(CHAT + "/batch", json={"requests": [ASK]})
        await client.post(CHAT, json=ASK)
        usage = (await client.get("/v1/usage")).json()
    assert batch.status_code == 200 and len(engine.batch_calls) == 1
    assert {row["model"] for row in usage["data"]} == {engine.model_name, "gpt-fallback"}


# -- the fallback's HTTP client -------------------------------------------------------------------


def endpoint(handler) -> FallbackTransport:
    return FallbackTransport("http://fb/v1/", "fb-secret", "small-model",
                             http_transport=httpx.MockTransport(handler))  # fmt: skip


async def test_the_client_sends_its_model_and_key_and_reads_the_answer() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion("ok"))

    reply = await endpoint(handler).chat({"model": "big", "messages": ASK["messages"]})
    [request] = seen
    assert str(request.url) == "http://fb/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer fb-secret"
    assert json.loads(request.content)["model"] == "small-model"
    assert reply.body["choices"][0]["message"]["content"] == "ok"
    assert reply.facts is not None and reply.facts.container == "fallback"


async def test_the_client_streams_until_done_and_a_cut_stream_is_unavailable() -> None:
    lines = "".join(f"data: {json.dumps(chunk(t))}\n\n" for t in ("a", "b"))

    def full(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=lines + "data: [DONE]\n\n")

    def cut(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=lines)

    parts = [p async for p in endpoint(full).stream({"messages": []})]
    assert [p.body["choices"][0]["delta"]["content"] for p in parts] == ["a", "b"]
    assert parts[0].facts is not None and parts[1].facts is None
    with pytest.raises(EngineUnavailable):
        _ = [p async for p in endpoint(cut).stream({"messages": []})]


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, EngineRequestError), (401, EngineUnavailable), (429, EngineUnavailable),
     (502, EngineUnavailable)],
)  # fmt: skip
async def test_the_client_maps_the_fallback_s_errors(status: int, error: type) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"message": "nope", "param": "messages"}})

    with pytest.raises(error) as info:
        await endpoint(handler).chat({"messages": []})
    assert "nope" in info.value.message and "fb-secret" not in info.value.message
