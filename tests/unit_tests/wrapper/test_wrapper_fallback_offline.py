"""The cold fallback, offline: which requests go to it by policy, that the engine is woken
meanwhile, that streams pass through it, that its answers are never cached and are labelled;
and the fallback's HTTP client over a mock endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from deploy.core.errors import EngineUnavailable
from deploy.transports.fallback import FallbackTransport
from deploy.wrapper import create_app
from tests.unit_tests.wrapper_fake import (
    FakeTransport,
    assert_error,
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


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 429, 500, 502])
async def test_the_client_maps_the_fallback_s_errors(status: int) -> None:
    """Whatever the fallback answers, the caller gets a retryable 503 naming its status, not
    its text: the fallback's refusal is not the service's (the engine serves it once warm),
    and its text is another party's (it may quote a key)."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"message": "nope", "param": "messages"}})

    with pytest.raises(EngineUnavailable) as info:
        await endpoint(handler).chat({"messages": []})
    error = info.value
    assert error.status_code == 503 and error.retry_after is not None
    assert f"the cold fallback answered {status}" in error.message
    assert "nope" not in error.message and "fb-secret" not in error.message
    assert error.param is None


# -- the fallback's error text stays on the server, its keys redacted ----------------------------

FALLBACK_KEY = "sk-proj-fallbackSECRET0123456789"
LEAKS = ("Zq9x", "sk-", "vak-", "fallbackSECRET", "Ab12Cd34Ef56Gh78Ij90")
"""What must never be seen in clear: a masked key's tail, key prefixes, the configured key, a
bare token."""
UPSTREAM_ERRORS = {
    "401 masked key": (401, {"error": {
        "message": "Incorrect API key provided: sk-proj-****...Zq9x. You can find your API "
                   "key at https://platform.example.com/account/api-keys.",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}),
    "403 configured key": (403, {"error": {"message": f"key {FALLBACK_KEY} is revoked"}}),
    "400 vak key": (400, {"error": {"message": "bad request for vak-Zq9xZq9xZq9x",
                                    "param": "messages"}}),
    "429 bearer": (429, {"error": {"message": "quota of Bearer Ab12Cd34Ef56Gh78Ij90 exceeded"}}),
    "502 plain text": (502, "upstream sk-abc...Zq9x failed"),
}  # fmt: skip


def fallback_app(status: int, payload: Any) -> tuple[FastAPI, FakeTransport]:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(payload, str):
            return httpx.Response(status, text=payload)
        return httpx.Response(status, json=payload)

    fallback = FallbackTransport("http://fb/v1", FALLBACK_KEY, "small-model",
                                 http_transport=httpx.MockTransport(handler))  # fmt: skip
    engine = FakeTransport()  # cold: the fallback serves
    config = make_settings(cold_fallback_url="http://fb/v1", cold_fallback_policy="always")
    return create_app(engine, config, fallback=fallback), engine


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("case", UPSTREAM_ERRORS.values(), ids=UPSTREAM_ERRORS.keys())
async def test_the_fallback_s_error_text_never_reaches_the_caller_nor_the_log_in_clear(
    case: tuple[int, Any], stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    status, payload = case
    app, _ = fallback_app(status, payload)
    caplog.set_level(logging.DEBUG)
    async with client_for(app) as client:
        response = await client.post(CHAT, json={**ASK, "stream": stream})
    error = assert_error(response, 503, param=None)
    assert "Retry-After" in response.headers
    assert error["message"].startswith(f"the cold fallback answered {status}"), error
    assert error["type"] == "engine_unavailable"
    for leak in LEAKS:
        assert leak not in response.text, (leak, response.text)
        assert leak not in caplog.text, (leak, caplog.text)
    # The operator still learns what the fallback said (redacted), server side.
    assert f"answered {status}" in caplog.text and "[redacted]" in caplog.text, caplog.text


async def test_an_error_in_the_fallback_s_stream_is_generic_and_redacted_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines = (f"data: {json.dumps(chunk('a'))}\n\n"
             'data: {"error": {"message": "key sk-...Zq9x lost its quota"}}\n\n')  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=lines)

    caplog.set_level(logging.DEBUG)
    with pytest.raises(EngineUnavailable) as info:
        _ = [p async for p in endpoint(handler).stream({"messages": []})]
    assert "the cold fallback" in info.value.message and info.value.retry_after is not None
    for leak in LEAKS:
        assert leak not in info.value.message and leak not in caplog.text, (leak, caplog.text)
    assert "lost its quota" in caplog.text


async def test_an_unreachable_fallback_names_no_url_nor_detail() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connect to http://user:sk-Zq9x@fb failed", request=request)

    with pytest.raises(EngineUnavailable) as info:
        await endpoint(handler).chat({"messages": []})
    assert "the cold fallback" in info.value.message
    assert "Zq9x" not in info.value.message and "sk-" not in info.value.message
