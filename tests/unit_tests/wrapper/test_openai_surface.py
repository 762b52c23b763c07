"""The rest of OpenAI's surface over fake transports: honest 404s for unknown routes,
slash-free aliases, ``/v1/completions`` (plain and streamed) and ``/v1/embeddings`` with an
embedding model served beside a chat model."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI

from deploy.core.contract import ENDPOINT_KEY
from deploy.wrapper import create_app
from deploy.wrapper.serving.registry import slash_free_alias
from tests.unit_tests.wrapper_fake import (
    KEY,
    FakeTransport,
    app_for,
    assert_error,
    client_for,
    drop_stream,
    fresh_app,
    make_settings,
    sse_data,
    sse_events,
)

CHAT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MODELS = [{"name": CHAT_MODEL}, {"name": EMBED_MODEL, "runner": "pooling"}]


def chat_and_embeddings() -> tuple[FastAPI, FakeTransport, FakeTransport]:
    chat, embed = FakeTransport(CHAT_MODEL), FakeTransport(EMBED_MODEL)
    settings = make_settings(models=json.dumps(MODELS))
    return create_app({CHAT_MODEL: chat, EMBED_MODEL: embed}, settings), chat, embed


def ask(model: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}], **({"model": model} if model else {}),
            **extra}  # fmt: skip


async def test_an_unknown_route_answers_openais_shape_naming_it_and_the_routes_served() -> None:
    app, _ = app_for()
    async with client_for(app) as client:
        response = await client.post("/v1/audio/speech", json={})
    error = assert_error(response, 404, param=None)
    assert error["message"].startswith("POST /v1/audio/speech is not a route of this service")
    for served in ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings",
                   "GET /v1/models"):  # fmt: skip
        assert served in error["message"]


def test_aliases_drop_the_provider_part_lower_case_and_stay_unique() -> None:
    assert slash_free_alias("HuggingFaceTB/SmolLM2-135M-Instruct", set()) == "smollm2-135m-instruct"
    assert slash_free_alias("org/Model", {"model"}) == "model-2"
    assert slash_free_alias("org/Model", {"model", "model-2"}) == "model-3"
    assert slash_free_alias("small", set()) is None  # already its own


async def test_an_alias_routes_like_the_served_name_and_the_engine_and_ledger_see_that() -> None:
    app, chat, _ = chat_and_embeddings()
    async with client_for(app) as client:
        cards = {c["id"]: c for c in (await client.get("/v1/models")).json()["data"]}
        assert cards[CHAT_MODEL]["aliases"] == ["smollm2-135m-instruct"]
        assert cards[EMBED_MODEL]["aliases"] == ["all-minilm-l6-v2"]
        answer = await client.post("/v1/chat/completions", json=ask("smollm2-135m-instruct"))
        assert answer.status_code == 200, answer.text
        rows = (await client.get("/v1/usage")).json()["data"]
    assert chat.chat_bodies[-1]["model"] == CHAT_MODEL
    assert {r["model"] for r in rows} == {CHAT_MODEL}
    unknown = "smollm2"
    async with client_for(app) as client:
        missing = await client.post("/v1/chat/completions", json=ask(unknown))
    assert "'smollm2-135m-instruct'" in assert_error(missing, 404, param="model")["message"]


async def test_a_text_completion_goes_to_the_engines_completions_route() -> None:
    app, fake = app_for()
    async with client_for(app) as client:
        response = await client.post("/v1/completions", json={"prompt": "Once", "max_tokens": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == "hello"
    assert body["vllm_autoscale"]["served_by"] == "engine"
    sent = fake.chat_bodies[-1]
    assert sent[ENDPOINT_KEY] == "/v1/completions" and sent["prompt"] == "Once"


async def test_a_streamed_text_completion_takes_the_stream_path() -> None:
    app, fake = app_for()
    fake.stream_chunks = [
        {"id": "c", "object": "text_completion", "model": "m",
         "choices": [{"index": 0, "text": "Hi", "finish_reason": None}]},
        {"id": "c", "object": "text_completion", "model": "m", "choices": [],
         "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}},
    ]  # fmt: skip
    async with client_for(app) as client:
        response = await client.post("/v1/completions", json={"prompt": "x", "stream": True})
    data = sse_data(sse_events(response.text))
    assert data[0]["choices"][0]["text"] == "Hi" and data[-1] == "[DONE]"
    assert fake.stream_bodies[-1][ENDPOINT_KEY] == "/v1/completions"


async def test_a_completion_past_the_token_limit_is_a_422_naming_the_field() -> None:
    app, fake = app_for()
    async with client_for(app) as client:
        response = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 65})
    assert_error(response, 422, param="max_tokens")
    assert fake.chat_bodies == []


async def test_embeddings_go_to_the_embedding_model_under_its_alias() -> None:
    app, chat, embed = chat_and_embeddings()
    async with client_for(app) as client:
        response = await client.post(
            "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["ab", "abcd"]}
        )
        assert response.status_code == 200, response.text
        rows = (await client.get("/v1/usage")).json()["data"]
    body = response.json()
    assert [d["embedding"][0] for d in body["data"]] == [2.0, 4.0]
    assert embed.chat_bodies[-1]["model"] == EMBED_MODEL and chat.chat_bodies == []
    assert {r["model"] for r in rows} == {EMBED_MODEL}


async def test_each_model_refuses_the_routes_it_does_not_serve() -> None:
    app, chat, embed = chat_and_embeddings()
    async with client_for(app) as client:
        to_embed = await client.post("/v1/chat/completions", json=ask(EMBED_MODEL))
        to_chat = await client.post("/v1/embeddings", json={"model": CHAT_MODEL, "input": "x"})
        cards = {c["id"]: c for c in (await client.get("/v1/models")).json()["data"]}
    assert "embedding model" in assert_error(to_embed, 400, param="model")["message"]
    assert "/v1/embeddings" in assert_error(to_chat, 400, param="model")["message"]
    assert chat.chat_bodies == embed.chat_bodies == []
    assert cards[EMBED_MODEL]["capabilities"]["endpoints"] == ["/v1/embeddings"]
    assert cards[EMBED_MODEL]["capabilities"]["task"] == "embedding"
    assert "/v1/completions" in cards[CHAT_MODEL]["capabilities"]["endpoints"]


async def test_a_caller_cannot_pick_the_engine_route_itself() -> None:
    app, fake = app_for()
    async with client_for(app) as client:
        response = await client.post(
            "/v1/chat/completions", json=ask(**{ENDPOINT_KEY: "/v1/embeddings"})
        )
    assert response.status_code == 200, response.text
    assert ENDPOINT_KEY not in fake.chat_bodies[-1]
    assert response.json()["object"] == "chat.completion"


# -- Responses streamed; what a hostile caller could try ------------------------------------


def _responses_events() -> list[dict[str, Any]]:
    done = {"id": "resp_1", "object": "response", "status": "completed", "output": [],
            "usage": {"input_tokens": 9, "output_tokens": 2, "total_tokens": 11}}  # fmt: skip
    return [
        {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}},
        {"type": "response.output_text.delta", "delta": "Hel", "output_index": 0},
        {"type": "response.output_text.delta", "delta": "lo", "output_index": 0},
        {"type": "response.completed", "response": done},
    ]


async def test_a_streamed_response_relays_vllm_s_events_and_books_their_usage() -> None:
    app, fake = fresh_app()
    fake.stream_chunks = _responses_events()
    async with client_for(app) as client:
        response = await client.post("/v1/responses", json={"input": "hi", "stream": True})
        usage = (await client.get("/v1/usage")).json()["totals"]
    assert response.status_code == 200
    events = [e for e in sse_data(sse_events(response.text)) if e != "[DONE]"]
    assert [e["type"] for e in events] == [e["type"] for e in _responses_events()]
    body = fake.stream_bodies[-1]
    assert body[ENDPOINT_KEY] == "/v1/responses" and body["store"] is False
    assert "stream_options" not in body  # not a Responses field: its last event has the usage
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["requests"]) == (9, 2, 1)


async def test_a_dropped_response_stream_and_text_completion_stream_are_booked() -> None:
    """A client gone before the last event: the parts the engine sent are still counted."""
    app, fake = fresh_app()
    for route, body, chunks in (
        ("/v1/responses", {"input": "hi", "stream": True}, _responses_events()[:3]),
        ("/v1/completions", {"prompt": "hi", "stream": True},
         [{"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": "Hel"}]},
          {"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": "lo"}]}]),
    ):  # fmt: skip
        fake.reset()
        fake.stream_chunks = [*chunks, {"never": True}]
        fake.stream_hang_at = len(chunks)
        await asyncio.wait_for(drop_stream(app, body, KEY, after=len(chunks), path=route), 5)
    async with client_for(app) as client:
        usage = (await client.get("/v1/usage")).json()["totals"]
    assert usage["requests"] == 2 and usage["completion_tokens"] >= 2
    assert usage["estimated"] == 2


async def test_responses_are_never_stored_and_carry_the_key_s_cache_salt() -> None:
    app, fake = fresh_app(prefix_cache_isolation="per_key")
    async with client_for(app) as client:
        refused = await client.post("/v1/responses", json={"input": "hi", "store": True})
        await client.post("/v1/responses", json={"input": "hi"})
    assert_error(refused, 422, param="store")
    (body,) = fake.chat_bodies
    assert body["store"] is False and len(body["cache_salt"]) == 64


async def test_a_response_without_an_output_cap_gets_the_default_one() -> None:
    """``VLLM_DEFAULT_MAX_TOKENS`` bounds Responses as it bounds chat and text completions."""
    app, fake = fresh_app(default_max_tokens=16)
    async with client_for(app) as client:
        await client.post("/v1/responses", json={"input": "hi"})
        await client.post("/v1/responses", json={"input": "hi", "max_output_tokens": 5})
    uncapped, capped = fake.chat_bodies
    assert uncapped["max_output_tokens"] == 16 and "max_tokens" not in uncapped
    assert capped["max_output_tokens"] == 5
