"""The wrapper over a fake transport, offline: auth, the seed's API, request limits, the
OpenAPI schema, cold-start facts, engine errors, batch, metrics and the service routes.

Streams are in ``test_wrapper_streams_offline.py``; the fake is ``wrapper_fake.py``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from deploy.core.contract import Facts
from deploy.core.errors import EngineRequestError, EngineStartError, EngineUnavailable, Overloaded
from deploy.core.version import __version__
from tests.unit_tests.wrapper_fake import (
    KEY,
    MODEL,
    FakeTransport,
    app_for,
    assert_error,
    client_for,
    completion,
    fresh_app,
)

CHAT_URL = "/v1/chat/completions"
BATCH_URL = "/v1/chat/completions/batch"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def app_and_fake() -> tuple[FastAPI, FakeTransport]:
    return app_for()


@pytest.fixture
def fake(app_and_fake: tuple[FastAPI, FakeTransport]) -> FakeTransport:
    return app_and_fake[1]


@pytest.fixture
async def client(app_and_fake: tuple[FastAPI, FakeTransport]) -> AsyncIterator[httpx.AsyncClient]:
    """Sends the key."""
    async with client_for(app_and_fake[0]) as c:
        yield c


@pytest.fixture
async def anon(app_and_fake: tuple[FastAPI, FakeTransport]) -> AsyncIterator[httpx.AsyncClient]:
    """Sends no key."""
    async with client_for(app_and_fake[0], auth=False) as c:
        yield c


def _messages(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"m{i}"} for i in range(n)]


# -- auth -----------------------------------------------------------------------------------------

PROTECTED: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", CHAT_URL, {"messages": MESSAGES}),
    ("POST", CHAT_URL, {"messages": MESSAGES, "stream": True}),
    ("POST", "/chat", {"messages": MESSAGES}),
    ("POST", BATCH_URL, {"requests": [{"messages": MESSAGES}]}),
    ("GET", "/v1/models", None),
    ("GET", "/status", None),
    ("GET", "/metrics", None),
    ("POST", "/warmup", None),
]
BAD_AUTH: dict[str, dict[str, str]] = {
    "no key": {},
    "wrong scheme": {"Authorization": f"Basic {KEY}"},
    "bare key": {"Authorization": KEY},
    "wrong key": {"Authorization": "Bearer not-the-key"},
    "empty bearer": {"Authorization": "Bearer "},
}


@pytest.mark.parametrize("headers", BAD_AUTH.values(), ids=BAD_AUTH.keys())
@pytest.mark.parametrize(
    ("method", "path", "body"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED]
)
async def test_protected_routes_answer_401_without_the_right_key(
    anon: httpx.AsyncClient,
    fake: FakeTransport,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    headers: dict[str, str],
) -> None:
    response = await anon.request(method, path, json=body, headers=headers)
    assert_error(response, 401, param=None, type_="authentication_error")
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == 401
    # Nothing reached the engine, not even a status probe.
    assert (fake.chat_bodies, fake.stream_bodies, fake.batch_calls) == ([], [], [])
    assert fake.warmups == 0 and fake.status_calls == 0


@pytest.mark.parametrize("path", ["/", "/health"])
async def test_root_and_health_need_no_key(anon: httpx.AsyncClient, path: str) -> None:
    response = await anon.get(path)
    assert response.status_code == 200
    assert response.json()["model"] == MODEL


async def test_the_bearer_scheme_is_case_insensitive(anon: httpx.AsyncClient) -> None:
    response = await anon.get("/v1/models", headers={"Authorization": f"bearer {KEY}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED]
)
async def test_no_key_configured_leaves_every_route_open(
    method: str, path: str, body: dict[str, Any] | None
) -> None:
    app, _ = app_for(wrapper_api_key=None)
    async with client_for(app, auth=False) as client:
        response = await client.request(method, path, json=body)
    assert response.status_code == (202 if path == "/warmup" else 200), response.text


async def test_auth_is_checked_before_the_body_on_the_hot_route(anon: httpx.AsyncClient) -> None:
    malformed = await anon.post(
        CHAT_URL, content=b"{not json", headers={"content-type": "application/json"}
    )
    invalid = await anon.post(CHAT_URL, json={"messages": []})
    assert_error(malformed, 401, type_="authentication_error")
    assert_error(invalid, 401, type_="authentication_error")


@pytest.mark.parametrize("path", ["/chat", BATCH_URL])
async def test_auth_is_checked_before_a_valid_json_body_is_validated(
    anon: httpx.AsyncClient, path: str
) -> None:
    response = await anon.post(path, json={"messages": [], "requests": []})
    assert_error(response, 401, type_="authentication_error")


@pytest.mark.parametrize("path", ["/chat", BATCH_URL])
async def test_auth_is_checked_before_malformed_json_on_fastapi_routes(
    anon: httpx.AsyncClient, path: str
) -> None:
    response = await anon.post(
        path, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 401, type_="authentication_error")


# -- the seed's API -------------------------------------------------------------------------------


async def test_root_is_the_seeds_json(client: httpx.AsyncClient, fake: FakeTransport) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.json() == {
        "service": "VLLM Auto-Scale Service",
        "version": "2.0.0",
        "architecture": {
            "wrapper": "Always-on (no GPU)",
            "vllm": "Auto-scale to zero (with GPU)",
            "scaledown_window": "2 minutes",
        },
        "model": MODEL,
        "package_version": __version__,  # added beside the seed's fields, none changed
    }
    assert fake.status_calls == 0  # never wakes (or even asks) the engine


@pytest.mark.parametrize(
    ("window", "text"),
    [(60, "1 minute"), (120, "2 minutes"), (600, "10 minutes"), (90, "90 seconds")],
)
async def test_root_states_the_scaledown_window(window: int, text: str) -> None:
    app, _ = app_for(scaledown_window=window)
    async with client_for(app, auth=False) as client:
        response = await client.get("/")
    assert response.json()["architecture"]["scaledown_window"] == text


async def test_health_is_the_seeds_json_plus_engine_state(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    fake.engine_status.state = "warm"
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "healthy",
        "wrapper_status": "running",
        "vllm_status": "auto-scaling (idle or active)",
        "model": MODEL,
        "architecture": "separated",
        "engine_state": "warm",
    }
    assert fake.warmups == 0 and fake.chat_bodies == []


async def test_seed_chat_answers_the_seeds_shape_with_metadata_headers(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    fake.chat_result = completion("the answer", prompt_tokens=11, completion_tokens=3)
    response = await client.post(
        "/chat", json={"messages": MESSAGES, "max_tokens": 16, "temperature": 0.5}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["content", "usage", "model", "finish_reason", "id", "metadata"]
    assert body["content"] == "the answer"
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    assert (body["model"], body["finish_reason"], body["id"]) == (MODEL, "stop", "chatcmpl-fake")
    meta = body["metadata"]
    assert set(meta) == {
        "request_id", "cold_start", "queue_wait_ms", "engine_ms", "cost", "cache", "served_by"
    }  # fmt: skip
    assert meta["served_by"] == response.headers["x-served-by"] == "engine"
    assert meta["cold_start"] is False and meta["queue_wait_ms"] == 0.0
    assert meta["cache"] == response.headers["x-cache"] == "bypass"  # temperature 0.5
    assert meta["request_id"] == response.headers["x-request-id"]
    assert response.headers["x-cold-start"] == "false"
    assert response.headers["x-queue-wait-ms"] == "0.0"
    assert float(response.headers["x-engine-ms"]) == meta["engine_ms"] >= 0
    # The engine got an OpenAI body for the served model.
    assert fake.chat_bodies == [
        {"messages": MESSAGES, "max_tokens": 16, "temperature": 0.5, "model": MODEL}
    ]


async def test_seed_chat_rejects_fields_it_does_not_know(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat", json={"messages": MESSAGES, "top_k": 3})
    assert_error(response, 422, param="top_k")


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/v1/models", headers={"x-request-id": "abc-123"})
    made = await client.get("/v1/models")
    rejected = await client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert given.headers["x-request-id"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert rejected.status_code == 401 and rejected.headers["x-request-id"]


async def test_models_lists_the_served_model(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and len(body["data"]) == 1
    model = body["data"][0]
    assert {k: model[k] for k in ("id", "object", "created", "owned_by")} == {
        "id": MODEL, "object": "model", "created": 0, "owned_by": "vllm-autoscale",
    }  # fmt: skip
    assert model["max_model_len"] == 8192 and model["capabilities"]["tool_calling"] is True


@pytest.mark.parametrize(("method", "status"), [("GET", 404), ("DELETE", 404)])
async def test_unknown_routes_answer_in_openai_shape(
    client: httpx.AsyncClient, method: str, status: int
) -> None:
    response = await client.request(method, "/v1/nowhere")
    assert_error(response, status, param=None)


async def test_wrong_method_answers_405_in_openai_shape(client: httpx.AsyncClient) -> None:
    assert_error(await client.get(CHAT_URL), 405, param=None)


# -- limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT_URL, "/chat"])
async def test_too_many_messages_is_422_naming_messages(
    client: httpx.AsyncClient, fake: FakeTransport, path: str
) -> None:
    at_limit = await client.post(path, json={"messages": _messages(4)})
    over = await client.post(path, json={"messages": _messages(5)})
    assert at_limit.status_code == 200, at_limit.text
    error = assert_error(over, 422, param="messages", type_="invalid_request_error")
    assert error["code"] == 422
    assert over.json()["detail"][0]["type"] == "too_long"
    assert len(fake.chat_bodies) == 1  # only the request within the limit reached the engine


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_over_the_limit_is_422_naming_the_field(
    client: httpx.AsyncClient, fake: FakeTransport, field: str
) -> None:
    at_limit = await client.post(CHAT_URL, json={"messages": MESSAGES, field: 64})
    over = await client.post(CHAT_URL, json={"messages": MESSAGES, field: 65})
    assert at_limit.status_code == 200, at_limit.text
    assert_error(over, 422, param=field)
    assert [b[field] for b in fake.chat_bodies] == [64]


async def test_seed_chat_max_tokens_over_the_limit_is_422(client: httpx.AsyncClient) -> None:
    assert_error(
        await client.post("/chat", json={"messages": MESSAGES, "max_tokens": 65}),
        422,
        param="max_tokens",
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": MESSAGES, "temperature": 3}, "temperature"),
        ({"messages": MESSAGES, "max_tokens": "5"}, "max_tokens"),  # strict: no "5" for 5
        ({"messages": MESSAGES, "n": 17}, "n"),
        ([1, 2], "body"),
    ],
)
async def test_invalid_chat_completion_bodies_name_the_field(
    client: httpx.AsyncClient, fake: FakeTransport, body: Any, param: str
) -> None:
    assert_error(await client.post(CHAT_URL, json=body), 422, param=param)
    assert fake.chat_bodies == []


async def test_batch_over_max_batch_is_422_naming_requests(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    item = {"messages": MESSAGES}
    at_limit = await client.post(BATCH_URL, json={"requests": [item] * 3})
    over = await client.post(BATCH_URL, json={"requests": [item] * 4})
    assert at_limit.status_code == 200, at_limit.text
    assert_error(over, 422, param="requests")
    assert len(fake.batch_calls) == 1


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([{"messages": MESSAGES, "stream": True}], "requests.0.stream"),
        (
            [{"messages": MESSAGES}, {"messages": MESSAGES, "max_tokens": 65}],
            "requests.1.max_tokens",
        ),
        ([{"messages": _messages(5)}], "requests.0.messages"),
        ([], "requests"),
    ],
)
async def test_invalid_batch_items_name_their_slot(
    client: httpx.AsyncClient, fake: FakeTransport, items: list[dict[str, Any]], param: str
) -> None:
    assert_error(await client.post(BATCH_URL, json={"requests": items}), 422, param=param)
    assert fake.batch_calls == []


@pytest.mark.parametrize("path", [CHAT_URL, "/chat", BATCH_URL])
async def test_a_body_over_max_body_bytes_is_413(
    client: httpx.AsyncClient, fake: FakeTransport, path: str
) -> None:
    big = {"messages": [{"role": "user", "content": "x" * 2100}]}
    response = await client.post(path, json={**big, "requests": [big]})
    assert int(response.request.headers["content-length"]) > 2048
    error = assert_error(response, 413, param="body")
    assert "2048" in error["message"]
    assert response.headers["x-request-id"]
    assert (fake.chat_bodies, fake.batch_calls) == ([], [])


async def _chunked(payload: bytes, size: int = 256) -> AsyncIterator[bytes]:
    for start in range(0, len(payload), size):
        yield payload[start : start + size]


async def test_a_chunked_body_over_max_body_bytes_is_413(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    payload = b'{"messages": [{"role": "user", "content": "' + b"x" * 3000 + b'"}]}'
    response = await client.post(
        CHAT_URL, content=_chunked(payload), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, param="body")
    assert fake.chat_bodies == []


async def test_a_chunked_body_within_the_limit_is_replayed_whole(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    payload = b'{"messages": [{"role": "user", "content": "' + b"y" * 1500 + b'"}]}'
    response = await client.post(
        CHAT_URL, content=_chunked(payload, 100), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert fake.chat_bodies[0]["messages"][0]["content"] == "y" * 1500


@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_not_served_is_404_naming_model(
    client: httpx.AsyncClient, fake: FakeTransport, stream: bool
) -> None:
    response = await client.post(
        CHAT_URL, json={"messages": MESSAGES, "model": "other/model", "stream": stream}
    )
    error = assert_error(response, 404, param="model", type_="invalid_request_error")
    assert "other/model" in error["message"] and MODEL in error["message"]
    assert (fake.chat_bodies, fake.stream_bodies) == ([], [])


@pytest.mark.parametrize("model", [MODEL, ""])
async def test_the_served_model_or_none_is_accepted(
    client: httpx.AsyncClient, fake: FakeTransport, model: str
) -> None:
    response = await client.post(CHAT_URL, json={"messages": MESSAGES, "model": model})
    assert response.status_code == 200, response.text
    assert fake.chat_bodies[0]["model"] == MODEL


async def test_a_batch_item_for_another_model_is_404_naming_its_slot(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    items = [{"messages": MESSAGES}, {"messages": MESSAGES, "model": "other/model"}]
    response = await client.post(BATCH_URL, json={"requests": items})
    assert_error(response, 404, param="requests.1.model")
    assert fake.batch_calls == []


async def test_malformed_json_on_the_hot_route_is_422_naming_body(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    response = await client.post(
        CHAT_URL, content=b'{"messages": [', headers={"content-type": "application/json"}
    )
    assert_error(response, 422, param="body")
    assert fake.chat_bodies == []


@pytest.mark.parametrize("path", ["/chat", BATCH_URL])
async def test_malformed_json_on_fastapi_routes_names_body(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.post(
        path, content=b'{"messages": [', headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code, param="body")


# -- the OpenAPI schema ---------------------------------------------------------------------------


def _maximum(prop: dict[str, Any]) -> Any:
    """The ``maximum`` of an ``int | None`` property (``anyOf``) or a plain one."""
    for option in prop.get("anyOf", [prop]):
        if "maximum" in option:
            return option["maximum"]
    return None


async def test_openapi_documents_the_configured_limits() -> None:
    app, _ = app_for(max_messages=7, max_tokens_limit=99, max_batch=5)
    async with client_for(app) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    schemas = schema["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert chat["messages"]["maxItems"] == 7
    assert _maximum(chat["max_tokens"]) == 99
    assert _maximum(chat["max_completion_tokens"]) == 99
    assert schemas["BatchRequest"]["properties"]["requests"]["maxItems"] == 5
    assert schemas["ChatRequest"]["properties"]["messages"]["maxItems"] == 7
    assert _maximum(schemas["ChatRequest"]["properties"]["max_tokens"]) == 99

    post = schema["paths"][CHAT_URL]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/ChatCompletionRequest"
    assert post["requestBody"]["required"] is True
    assert {"200", "401", "404", "413", "422", "503"} <= set(post["responses"])
    assert "text/event-stream" in post["responses"]["200"]["content"]
    assert {BATCH_URL, "/chat", "/", "/health", "/status", "/metrics", "/warmup"} <= set(
        schema["paths"]
    )
    # Every $ref resolves.
    refs = re.findall(r'"\$ref": ?"#/components/schemas/([^"]+)"', response.text)
    assert refs and all(name in schemas for name in refs)


# -- cold-start facts and the engine's body -------------------------------------------------------


async def test_cold_start_facts_reach_headers_and_body(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    fake.facts = Facts(cold_start=True, queue_wait_s=1.5)
    response = await client.post(CHAT_URL, json={"messages": MESSAGES})
    assert response.status_code == 200, response.text
    assert response.headers["x-cold-start"] == "true"
    assert response.headers["x-queue-wait-ms"] == "1500.0"
    body = response.json()
    meta = body["vllm_autoscale"]
    assert meta["cold_start"] is True and meta["queue_wait_ms"] == 1500.0
    assert meta["request_id"] == response.headers["x-request-id"]
    assert str(meta["engine_ms"]) == response.headers["x-engine-ms"]
    # The cold start's wait is priced at the configured GPU price ($2.50/h, one GPU).
    assert meta["cost"]["cold_start_usd"] == round(1.5 * 2.5 / 3600, 8)
    assert body["choices"][0]["message"]["content"] == "hello"  # vLLM's response, kept


async def test_a_warm_call_reports_no_cold_start(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    response = await client.post(CHAT_URL, json={"messages": MESSAGES})
    meta = response.json()["vllm_autoscale"]
    assert response.headers["x-cold-start"] == "false"
    assert meta["cold_start"] is False and meta["queue_wait_ms"] == 0.0
    assert meta["engine_ms"] >= 0
    assert meta["cost"]["cold_start_usd"] == 0.0 and meta["cost"]["usd"] >= 0


async def test_the_engine_gets_the_callers_fields_and_the_served_model(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    response = await client.post(
        CHAT_URL,
        json={"messages": MESSAGES, "model": MODEL, "temperature": 0.2, "top_k": 5, "seed": None},
    )
    assert response.status_code == 200, response.text
    # Unknown fields pass through to vLLM; unset/None ones are not invented; no default max_tokens.
    assert fake.chat_bodies == [
        {"messages": MESSAGES, "model": MODEL, "temperature": 0.2, "top_k": 5}
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, {"max_tokens": 32}),
        ({"max_tokens": 5}, {"max_tokens": 5}),
        ({"max_completion_tokens": 7}, {"max_completion_tokens": 7}),
    ],
)
async def test_default_max_tokens_fills_only_requests_that_set_none(
    extra: dict[str, int], expected: dict[str, int]
) -> None:
    app, fake = app_for(default_max_tokens=32)
    async with client_for(app) as client:
        chat = await client.post(CHAT_URL, json={"messages": MESSAGES, **extra})
        seed = await client.post("/chat", json={"messages": MESSAGES, **extra})
        batch = await client.post(BATCH_URL, json={"requests": [{"messages": MESSAGES, **extra}]})
    assert chat.status_code == 200 and batch.status_code == 200, (chat.text, batch.text)
    tokens = {"max_tokens", "max_completion_tokens"}
    sent = fake.chat_bodies[0]
    assert {k: v for k, v in sent.items() if k in tokens} == expected
    batch_body = fake.batch_calls[0][0][0]
    assert {k: v for k, v in batch_body.items() if k in tokens} == expected
    if "max_completion_tokens" not in extra:  # the seed's /chat has no max_completion_tokens
        assert seed.status_code == 200
        assert fake.chat_bodies[1]["max_tokens"] == expected["max_tokens"]


# -- engine errors before the first byte ----------------------------------------------------------

ENGINE_ERRORS = [
    pytest.param(
        Overloaded("queue full", retry_after=10), 503, None, "overloaded", "10", id="overloaded"
    ),
    pytest.param(
        EngineRequestError("bad", status_code=400, param="x"),
        400,
        "x",
        "invalid_request_error",
        None,
        id="request-error",
    ),
    pytest.param(
        EngineRequestError("too long", status_code=413, param="messages"),
        413,
        "messages",
        "invalid_request_error",
        None,
        id="request-error-413",
    ),
    pytest.param(
        EngineUnavailable("gone"), 503, None, "engine_unavailable", None, id="unavailable"
    ),
    pytest.param(
        EngineStartError("no GPU"), 503, None, "engine_start_failed", None, id="start-error"
    ),
    pytest.param(
        Overloaded("still starting", status_code=429, retry_after=30.7),
        429,
        None,
        "overloaded",
        "30",
        id="overloaded-429",
    ),
]


@pytest.mark.parametrize(("exc", "status", "param", "type_", "retry_after"), ENGINE_ERRORS)
@pytest.mark.parametrize("path", [CHAT_URL, "/chat"])
async def test_engine_errors_keep_their_status_and_shape(
    client: httpx.AsyncClient,
    fake: FakeTransport,
    path: str,
    exc: Exception,
    status: int,
    param: str | None,
    type_: str,
    retry_after: str | None,
) -> None:
    fake.chat_error = exc
    response = await client.post(path, json={"messages": MESSAGES})
    error = assert_error(response, status, param=param, type_=type_)
    assert error["code"] == status and error["message"] == str(exc)
    assert response.headers.get("retry-after") == retry_after
    assert "x-cold-start" not in response.headers


@pytest.mark.parametrize(("exc", "status", "param", "type_", "retry_after"), ENGINE_ERRORS)
async def test_a_batch_call_that_fails_whole_keeps_its_status(
    client: httpx.AsyncClient,
    fake: FakeTransport,
    exc: Exception,
    status: int,
    param: str | None,
    type_: str,
    retry_after: str | None,
) -> None:
    fake.batch_error = exc
    response = await client.post(BATCH_URL, json={"requests": [{"messages": MESSAGES}]})
    assert_error(response, status, param=param, type_=type_)
    assert response.headers.get("retry-after") == retry_after


async def test_an_unexpected_transport_error_is_a_500_in_openai_shape() -> None:
    app, fake = app_for()
    fake.chat_error = RuntimeError("transport bug")
    async with client_for(app, raise_app_exceptions=False) as client:
        response = await client.post(CHAT_URL, json={"messages": MESSAGES})
    assert_error(response, 500)


# -- batch ----------------------------------------------------------------------------------------


async def test_a_batch_is_one_engine_call_and_errors_keep_their_slot(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    fake.facts = Facts(cold_start=True, queue_wait_s=0.25)
    failure = EngineRequestError("prompt too long", status_code=400, param="messages")
    fake.batch_results = [completion("a"), failure, completion("c")]
    items = [{"messages": _messages(i + 1), "max_tokens": 8} for i in range(3)]
    response = await client.post(BATCH_URL, json={"requests": items, "max_concurrency": 2})
    assert response.status_code == 200, response.text

    assert len(fake.batch_calls) == 1
    bodies, max_concurrency = fake.batch_calls[0]
    assert max_concurrency == 2
    assert [len(b["messages"]) for b in bodies] == [1, 2, 3]
    assert all(b["model"] == MODEL and b["max_tokens"] == 8 for b in bodies)

    body = response.json()
    assert body["object"] == "batch.chat.completion"
    meta = body["vllm_autoscale"]
    assert meta["cold_start"] is True and meta["queue_wait_ms"] == 250.0
    assert response.headers["x-cold-start"] == "true"
    assert response.headers["x-queue-wait-ms"] == "250.0"
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert [r["status_code"] for r in results] == [200, 400, 200]
    assert results[1] == {
        "index": 1,
        "status_code": 400,
        "error": {
            "message": "prompt too long",
            "type": "invalid_request_error",
            "param": "messages",
            "code": 400,
        },
    }
    for i, text in ((0, "a"), (2, "c")):
        answer = results[i]["response"]
        assert answer["choices"][0]["message"]["content"] == text
        assert answer["vllm_autoscale"] == meta


async def test_a_batch_without_max_concurrency_passes_none(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    response = await client.post(BATCH_URL, json={"requests": [{"messages": MESSAGES}] * 2})
    assert response.status_code == 200
    assert [mc for _, mc in fake.batch_calls] == [None]
    assert [
        r["response"]["choices"][0]["message"]["content"] for r in response.json()["results"]
    ] == [
        "answer 0",
        "answer 1",
    ]


async def test_batch_rejects_unknown_top_level_fields(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    response = await client.post(
        BATCH_URL, json={"requests": [{"messages": MESSAGES}], "priority": 1}
    )
    assert_error(response, 422, param="priority")
    assert fake.batch_calls == []


# -- metrics and the service routes ---------------------------------------------------------------


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample in ``text`` (None when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if head.split("{")[0] == name and found == labels:
            return float(value)
    return None


@pytest.fixture
async def fresh() -> AsyncIterator[tuple[httpx.AsyncClient, FakeTransport]]:
    """A client on a new app: its metrics count this test's requests only."""
    app, fake = fresh_app()
    async with client_for(app) as client:
        yield client, fake


async def test_metrics_count_requests_by_route_and_tokens_from_usage(
    fresh: tuple[httpx.AsyncClient, FakeTransport],
) -> None:
    client, fake = fresh
    fake.chat_result = completion(prompt_tokens=7, completion_tokens=5)
    for _ in range(2):
        assert (await client.post(CHAT_URL, json={"messages": MESSAGES})).status_code == 200
    assert (await client.post("/chat", json={"messages": MESSAGES})).status_code == 200
    rejected = await client.post(CHAT_URL, json={"messages": MESSAGES, "max_tokens": 999})
    assert rejected.status_code == 422
    fake.batch_results = [completion(prompt_tokens=1, completion_tokens=1), EngineUnavailable("x")]
    batch = await client.post(BATCH_URL, json={"requests": [{"messages": MESSAGES}] * 2})
    assert batch.status_code == 200

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    requests = "vllm_autoscale_requests_total"
    assert _sample(text, requests, route=CHAT_URL, status="200") == 2.0
    assert _sample(text, requests, route=CHAT_URL, status="422") == 1.0
    assert _sample(text, requests, route="/chat", status="200") == 1.0
    assert _sample(text, requests, route=BATCH_URL, status="200") == 1.0
    # 3 completions of 7 + 5 tokens, and the batch's one good slot of 1 + 1.
    assert _sample(text, "vllm_autoscale_tokens_total", direction="in") == 22.0
    assert _sample(text, "vllm_autoscale_tokens_total", direction="out") == 16.0
    # The gauges come from the transport's status (without waking it).
    assert _sample(text, "vllm_autoscale_queue_depth") == 2.0
    assert _sample(text, "vllm_autoscale_cold_starts") == 1.0
    assert fake.warmups == 0
    assert _sample(text, "vllm_autoscale_request_seconds_count", route=CHAT_URL) == 3.0


async def test_metrics_count_rejected_and_unmatched_requests(
    fresh: tuple[httpx.AsyncClient, FakeTransport],
) -> None:
    client, _ = fresh
    assert (await client.get("/v1/models", headers={"Authorization": "x"})).status_code == 401
    assert (await client.get("/nowhere")).status_code == 404
    text = (await client.get("/metrics")).text
    requests = "vllm_autoscale_requests_total"
    assert _sample(text, requests, route="/v1/models", status="401") == 1.0
    assert _sample(text, requests, route="unmatched", status="404") == 1.0


async def test_status_is_the_transports_status_plus_model(
    client: httpx.AsyncClient, fake: FakeTransport
) -> None:
    fake.engine_status.last_error = "boom"
    fake.engine_status.extra = {"engine_pid": 1234, "containers": 1}
    response = await client.get("/status")
    assert response.status_code == 200
    status = response.json()
    assert status.pop("state_store")["ok"] is True  # the gateway's store (admins only)
    gpu = status.pop("gpu")[MODEL]  # the GPU's up-time and cost (admins only)
    assert status.pop("boot") == {"last_boots_s": []}  # no boot seen: no estimate
    assert status.pop("deployment") is None  # nothing deployed: a local app
    assert gpu["today"]["up_s"] == 0 and gpu["month"]["always_on_usd"] > 0
    assert status == {
        "model": MODEL,
        "state": "cold",
        "queue_depth": 2,
        "in_flight": 0,
        "cold_starts": 1,
        "scaledown_window": 120.0,
        "last_request_at": None,
        "last_error": "boom",
        "engine_pid": 1234,
        "containers": 1,
    }
    assert fake.status_calls == 1 and fake.warmups == 0


async def test_warmup_is_202_and_warms_once(client: httpx.AsyncClient, fake: FakeTransport) -> None:
    response = await client.post("/warmup")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["model"] == MODEL and body["state"] == "starting"
    assert fake.warmups == 1
    assert (fake.chat_bodies, fake.stream_bodies, fake.batch_calls) == ([], [], [])


async def test_warmup_is_post_only(client: httpx.AsyncClient, fake: FakeTransport) -> None:
    assert_error(await client.get("/warmup"), 405)
    assert fake.warmups == 0


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
async def test_docs_need_the_key_unless_made_public(path: str) -> None:
    app, _ = app_for()
    async with client_for(app, auth=False) as anon:
        assert (await anon.get(path)).status_code == 401
    async with client_for(app) as client:
        assert (await client.get(path)).status_code == 200
    public, _ = app_for(public_docs=True)
    async with client_for(public, auth=False) as anon:
        assert (await anon.get(path)).status_code == 200
    open_app, _ = app_for(wrapper_api_key=None)
    async with client_for(open_app, auth=False) as anon:
        assert (await anon.get(path)).status_code == 200
