"""The wrapper as a gateway, over the fake transport: named keys and roles, per-key limits
(429 with Retry-After, the engine untouched), budgets, the response cache, the usage and
key routes, and metrics labelled by key name."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from tests.unit_tests.wrapper_fake import (
    BASE_URL,
    KEY,
    FakeTransport,
    assert_error,
    chunk,
    completion,
    fresh_app,
    sse_data,
    sse_events,
    usage_chunk,
)

CHAT_URL = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
DETERMINISTIC = {"messages": MESSAGES, "max_tokens": 8, "temperature": 0}
KEYS = {"alice": "alice-" + "a" * 40, "bob": "bob-" + "b" * 40, "carol": "carol-" + "c" * 40,
        "dave": "dave-" + "d" * 40, "erin": "erin-" + "e" * 40}  # fmt: skip
ENTRIES = [
    {"name": "alice", "key": KEYS["alice"], "rpm": 2},
    {"name": "bob", "key": KEYS["bob"]},
    {"name": "carol", "key": KEYS["carol"], "tpm": 100},
    {"name": "dave", "key": KEYS["dave"], "monthly_budget_usd": 1e-9},
    {"name": "erin", "key": KEYS["erin"], "max_streams": 1},
]


def gateway_app(**overrides: Any) -> tuple[FastAPI, FakeTransport]:
    settings: dict[str, Any] = {"api_keys": SecretStr(json.dumps(ENTRIES)),
                                "cache_max_entries": 16}  # fmt: skip
    return fresh_app(**(settings | overrides))


@asynccontextmanager
async def as_key(app: FastAPI, name: str | None) -> AsyncIterator[httpx.AsyncClient]:
    """A client sending ``name``'s key (``"default"``: the admin key; None: no key)."""
    token = {"default": KEY, None: None}.get(name, KEYS.get(name or ""))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url=BASE_URL, headers=headers, timeout=5.0
    ) as client:
        yield client


async def chat(app: FastAPI, name: str, body: dict[str, Any] | None = None, **kw: Any) -> Any:
    async with as_key(app, name) as client:
        return await client.post(CHAT_URL, json=body or {"messages": MESSAGES}, **kw)


# -- keys and roles -------------------------------------------------------------------------------


async def test_every_named_key_opens_inference_and_an_unknown_one_does_not() -> None:
    app, fake = gateway_app()
    for name in ("alice", "bob", "default"):
        assert (await chat(app, name)).status_code == 200
    async with as_key(app, None) as client:
        client.headers["Authorization"] = "Bearer alice-" + "x" * 40
        assert_error(await client.post(CHAT_URL, json={"messages": MESSAGES}), 401)
    assert len(fake.chat_bodies) == 3


async def test_a_user_key_may_not_read_metrics_or_manage_keys() -> None:
    app, _ = gateway_app()
    async with as_key(app, "bob") as client:
        for response in (
            await client.get("/metrics"),
            await client.get("/v1/keys"),
            await client.post("/v1/keys", json={"name": "mallory"}),
            await client.get("/v1/usage", params={"key": "alice"}),
        ):
            assert_error(response, 403, type_="permission_error")
        assert (await client.get("/status")).status_code == 200


async def test_metrics_name_keys_and_never_show_one() -> None:
    app, _ = gateway_app()
    await chat(app, "bob")
    for _ in range(3):
        await chat(app, "alice")  # the third is over alice's rpm
    async with as_key(app, "default") as client:
        text = (await client.get("/metrics")).text
    assert 'vllm_autoscale_key_requests_total{key="bob",outcome="served"} 1.0' in text
    assert 'vllm_autoscale_key_requests_total{key="alice",outcome="limited:rpm"} 1.0' in text
    assert 'vllm_autoscale_key_tokens_total{direction="in",key="bob"} 7.0' in text
    assert not any(secret in text for secret in (*KEYS.values(), KEY))


# -- limits -----------------------------------------------------------------------------------


async def test_over_its_rpm_a_key_gets_429_with_retry_after_and_the_engine_is_not_asked() -> None:
    app, fake = gateway_app()
    answers = [await chat(app, "alice") for _ in range(3)]
    assert [r.status_code for r in answers[:2]] == [200, 200]
    error = assert_error(answers[2], 429, param=None, type_="rpm")
    assert error["code"] == "rate_limit_exceeded" and "requests per minute" in error["message"]
    assert 1 <= int(answers[2].headers["retry-after"]) <= 60
    assert len(fake.chat_bodies) == 2  # the refused request never reached the engine
    assert (await chat(app, "bob")).status_code == 200  # other keys keep their own minute


async def test_tokens_per_minute_reserve_max_tokens_and_settle_on_the_real_usage() -> None:
    """carol: 100 tokens a minute. Each request reserves its prompt (about 8 tokens) plus
    max_tokens 60 and settles on its usage (12): three fit, the fourth does not. Without
    settling, the second would not."""
    app, fake = gateway_app()
    body = {"messages": MESSAGES, "max_tokens": 60}
    statuses = [(await chat(app, "carol", body)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert len(fake.chat_bodies) == 3


async def test_a_failed_request_gives_its_reserved_tokens_back() -> None:
    app, fake = gateway_app()
    fake.chat_error = RuntimeError("engine exploded")
    body = {"messages": MESSAGES, "max_tokens": 60}
    async with as_key(app, "carol") as client:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        client._transport = transport  # the 500 is the point here
        for _ in range(3):
            assert (await client.post(CHAT_URL, json=body)).status_code == 500
    fake.chat_error = None
    assert (await chat(app, "carol", body)).status_code == 200


async def test_a_key_holds_at_most_max_streams_open() -> None:
    app, fake = gateway_app()
    fake.stream_delay = 0.3  # the first stream waits for its engine: its slot is held
    stream = {"messages": MESSAGES, "stream": True}
    first = asyncio.create_task(chat(app, "erin", stream))
    await asyncio.sleep(0.1)
    second = await chat(app, "erin", stream)
    assert_error(second, 429, type_="max_streams")
    assert (await first).status_code == 200
    fake.stream_delay = 0
    third = await chat(app, "erin", stream)  # the first one's slot is free again
    assert third.status_code == 200 and sse_data(sse_events(third.text))[-1] == "[DONE]"
    assert len(fake.stream_bodies) == 2


async def test_a_monthly_budget_stops_a_key_at_its_cap_until_the_month_ends() -> None:
    app, fake = gateway_app()
    first = await chat(app, "dave")
    assert first.status_code == 200 and first.json()["vllm_autoscale"]["cost"]["usd"] > 1e-9
    refused = await chat(app, "dave")
    error = assert_error(refused, 429, type_="monthly_budget_usd")
    assert error["code"] == "insufficient_quota"
    assert int(refused.headers["retry-after"]) <= 31 * 86400
    assert len(fake.chat_bodies) == 1


async def test_a_batch_takes_one_request_per_item_from_the_rpm() -> None:
    app, fake = gateway_app()
    async with as_key(app, "alice") as client:
        three = {"requests": [{"messages": MESSAGES}] * 3}
        assert_error(await client.post(CHAT_URL + "/batch", json=three), 429, type_="rpm")
        two = {"requests": [{"messages": MESSAGES}] * 2}
        assert (await client.post(CHAT_URL + "/batch", json=two)).status_code == 200
    assert len(fake.batch_calls) == 1


NO_RPM = {"name": "gina", "key": "gina-" + "g" * 40, "rpm": 0}
NO_BUDGET = {"name": "hank", "key": "hank-" + "h" * 40, "monthly_budget_usd": 0}


def client_with(app: FastAPI, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL,
                             headers={"Authorization": f"Bearer {token}"})  # fmt: skip


async def test_warmup_counts_under_the_caller_s_limits() -> None:
    """Waking the GPU is a request: a key out of requests or out of budget may not."""
    app, fake = gateway_app(api_keys=SecretStr(json.dumps([*ENTRIES, NO_RPM, NO_BUDGET])))
    async with client_with(app, NO_RPM["key"]) as gina, client_with(app, NO_BUDGET["key"]) as hank:
        for _ in range(3):
            refused = await gina.post("/warmup")
            assert_error(refused, 429, type_="rpm")
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        error = assert_error(await hank.post("/warmup"), 429, type_="monthly_budget_usd")
        assert error["code"] == "insufficient_quota"
    assert fake.warmups == 0
    async with as_key(app, "alice") as alice:  # rpm 2: a warm-up takes one request of it
        assert (await alice.post("/warmup")).status_code == 202
        assert (await alice.post("/warmup")).status_code == 202
        assert_error(await alice.post("/warmup"), 429, type_="rpm")
    assert fake.warmups == 2
    assert_error(await chat(app, "alice"), 429, type_="rpm")
    async with as_key(app, "bob") as bob:  # no limits: as before
        assert (await bob.post("/warmup")).status_code == 202
        assert (await bob.post("/warmup", params={"model": "nope"})).status_code == 404
    assert fake.warmups == 3


# -- the response cache -----------------------------------------------------------------------


async def test_a_deterministic_request_is_answered_from_the_cache_the_second_time() -> None:
    app, fake = gateway_app()
    miss = await chat(app, "bob", DETERMINISTIC)
    hit = await chat(app, "bob", DETERMINISTIC)
    assert miss.headers["x-cache"] == "miss" and hit.headers["x-cache"] == "hit"
    assert hit.json()["choices"] == miss.json()["choices"]
    assert hit.json()["usage"] == miss.json()["usage"]
    meta = hit.json()["vllm_autoscale"]
    assert meta["cache"] == "hit" and meta["cost"]["usd"] == 0 and meta["cold_start"] is False
    assert len(fake.chat_bodies) == 1
    async with as_key(app, "default") as client:
        status = (await client.get("/status")).json()
    assert status["cache"]["entries"] == 1 and status["cache"]["bytes"] > 0
    assert (status["cache"]["hits"], status["cache"]["misses"]) == (1, 1)


async def test_the_cache_is_per_key_unless_shared() -> None:
    app, fake = gateway_app()
    await chat(app, "bob", DETERMINISTIC)
    other = await chat(app, "alice", DETERMINISTIC)
    assert other.headers["x-cache"] == "miss" and len(fake.chat_bodies) == 2

    shared, shared_fake = gateway_app(cache_shared=True)
    await chat(shared, "bob", DETERMINISTIC)
    assert (await chat(shared, "alice", DETERMINISTIC)).headers["x-cache"] == "hit"
    assert len(shared_fake.chat_bodies) == 1


@pytest.mark.parametrize(
    ("extra", "cached"),
    [({"temperature": 0.7}, False), ({"temperature": 0.7, "seed": 3}, True), ({}, False)],
)
async def test_only_deterministic_requests_are_cached(extra: dict, cached: bool) -> None:
    app, fake = gateway_app()
    body = {"messages": MESSAGES, **extra}
    await chat(app, "bob", body)
    second = await chat(app, "bob", body)
    assert second.headers["x-cache"] == ("hit" if cached else "bypass")
    assert len(fake.chat_bodies) == (1 if cached else 2)


async def test_cache_control_no_cache_asks_the_engine_and_no_store_leaves_the_cache_alone() -> None:
    app, fake = gateway_app()
    await chat(app, "bob", DETERMINISTIC)
    fake.chat_result = completion("a fresher answer")
    fresh = await chat(app, "bob", DETERMINISTIC, headers={"cache-control": "no-cache"})
    assert fresh.headers["x-cache"] == "miss"
    replay = await chat(app, "bob", DETERMINISTIC)
    assert replay.json()["choices"][0]["message"]["content"] == "a fresher answer"
    untouched = await chat(app, "bob", DETERMINISTIC, headers={"cache-control": "no-store"})
    assert untouched.headers["x-cache"] == "bypass" and len(fake.chat_bodies) == 3


async def test_a_cache_hit_is_not_held_to_the_rate_limit() -> None:
    """Limits protect the GPU; a replay does not touch it."""
    app, fake = gateway_app()
    await chat(app, "alice", DETERMINISTIC)
    await chat(app, "alice")
    assert (await chat(app, "alice")).status_code == 429
    assert (await chat(app, "alice", DETERMINISTIC)).headers["x-cache"] == "hit"
    assert len(fake.chat_bodies) == 2


async def test_a_stream_fills_the_cache_and_a_hit_replays_as_a_stream() -> None:
    app, fake = gateway_app()
    finish = chunk("")
    finish["choices"][0]["finish_reason"] = "stop"
    fake.stream_chunks = [chunk("Hel"), chunk("lo"), finish, usage_chunk()]
    stream = {**DETERMINISTIC, "stream": True, "stream_options": {"include_usage": True}}
    first = await chat(app, "bob", stream)
    assert first.headers["x-cache"] == "miss"
    plain = await chat(app, "bob", DETERMINISTIC)
    assert plain.headers["x-cache"] == "hit"
    assert plain.json()["choices"][0]["message"]["content"] == "Hello"
    replay = await chat(app, "bob", stream)
    assert replay.headers["x-cache"] == "hit"
    assert replay.headers["content-type"].startswith("text/event-stream")
    events = sse_data(sse_events(replay.text))
    assert events[-1] == "[DONE]"
    text = "".join(
        (c["choices"][0]["delta"].get("content") or "") for c in events[:-1] if c["choices"]
    )
    assert text == "Hello"
    usage = [c for c in events[:-1] if c.get("usage")]
    assert usage and usage[0]["usage"] == plain.json()["usage"]
    assert usage[0]["vllm_autoscale"]["cache"] == "hit"
    assert len(fake.stream_bodies) == 1 and fake.chat_bodies == []


async def test_a_stream_filled_entry_does_not_answer_a_request_for_logprobs() -> None:
    """A stream put together has no logprobs: the plain request that asks for them goes to
    the engine, and its answer (which has them) then answers plain and streamed requests."""
    app, fake = gateway_app()
    finish = chunk("")
    finish["choices"][0]["finish_reason"] = "stop"
    fake.stream_chunks = [chunk("Hel"), chunk("lo"), finish, usage_chunk()]
    asks = {**DETERMINISTIC, "logprobs": True, "top_logprobs": 1}
    logprobs = {"content": [{"token": "Hello", "logprob": -0.5, "bytes": None,
                             "top_logprobs": [{"token": "Hello", "logprob": -0.5}]}]}  # fmt: skip
    fake.chat_result["choices"][0]["logprobs"] = logprobs
    assert (await chat(app, "bob", {**asks, "stream": True})).headers["x-cache"] == "miss"
    plain = await chat(app, "bob", asks)
    assert plain.headers["x-cache"] == "miss" and len(fake.chat_bodies) == 1
    assert plain.json()["choices"][0]["logprobs"] == logprobs
    again = await chat(app, "bob", asks)
    assert again.headers["x-cache"] == "hit"
    assert again.json()["choices"][0]["logprobs"] == logprobs
    replay = await chat(app, "bob", {**asks, "stream": True})
    assert replay.headers["x-cache"] == "hit"
    events = sse_data(sse_events(replay.text))
    assert next(c["choices"][0]["logprobs"] for c in events[:-1] if c["choices"]) == logprobs
    assert len(fake.stream_bodies) == 1 and len(fake.chat_bodies) == 1


# -- usage and keys routes --------------------------------------------------------------------


async def test_a_stream_cut_before_its_finish_is_not_cached() -> None:
    app, fake = gateway_app()
    stream = {**DETERMINISTIC, "stream": True}
    await chat(app, "bob", stream)  # the fake's stream ends without a finish reason
    assert (await chat(app, "bob", DETERMINISTIC)).headers["x-cache"] == "miss"
    assert len(fake.chat_bodies) == 1


async def test_usage_shows_a_key_its_own_rows_and_an_admin_everyone() -> None:
    app, _ = gateway_app()
    await chat(app, "bob", DETERMINISTIC)
    await chat(app, "bob", DETERMINISTIC)  # a hit
    await chat(app, "alice")
    async with as_key(app, "bob") as client:
        own = (await client.get("/v1/usage")).json()
    assert {row["key"] for row in own["data"]} == {"bob"}
    assert own["totals"]["requests"] == 1 and own["totals"]["cache_hits"] == 1
    assert own["totals"]["prompt_tokens"] == 7 and own["totals"]["cached_tokens"] == 12
    async with as_key(app, "default") as client:
        everyone = (await client.get("/v1/usage")).json()
        only_alice = (await client.get("/v1/usage", params={"key": "alice"})).json()
        bad = await client.get("/v1/usage", params={"start": "yesterday"})
    assert {row["key"] for row in everyone["data"]} == {"alice", "bob"}
    assert everyone["totals"]["requests"] == 2
    assert [row["key"] for row in only_alice["data"]] == ["alice"]
    assert_error(bad, 422, param="start")


async def test_an_admin_creates_lists_and_revokes_keys() -> None:
    app, _ = gateway_app()
    async with as_key(app, "default") as admin:
        created = await admin.post("/v1/keys", json={"name": "frank", "rpm": 1})
        assert created.status_code == 201, created.text
        token = created.json()["key"]
        assert created.json()["name"] == "frank" and created.json()["rpm"] == 1
        listed = (await admin.get("/v1/keys")).json()["data"]
        assert "frank" in {k["name"] for k in listed}
        assert not any("sha256" in k or "key" in k for k in listed)
        assert token not in json.dumps(listed)
        async with as_key(app, None) as frank:
            frank.headers["Authorization"] = f"Bearer {token}"
            assert (await frank.post(CHAT_URL, json={"messages": MESSAGES})).status_code == 200
            assert_error(await frank.post(CHAT_URL, json={"messages": MESSAGES}), 429)
            assert (await admin.delete("/v1/keys/frank")).status_code == 204
            assert_error(await frank.get("/status"), 401)
        assert_error(await admin.post("/v1/keys", json={"name": "alice"}), 409, param="name")
        assert_error(await admin.delete("/v1/keys/alice"), 409, param="name")
        assert_error(await admin.delete("/v1/keys/nobody"), 404, param="name")
        assert_error(await admin.post("/v1/keys", json={"name": "a b"}), 422, param="name")


async def test_without_any_key_everyone_is_the_anonymous_admin() -> None:
    app, _ = fresh_app(wrapper_api_key=None)
    async with as_key(app, None) as client:
        assert (await client.post(CHAT_URL, json={"messages": MESSAGES})).status_code == 200
        usage = (await client.get("/v1/usage")).json()
    assert [row["key"] for row in usage["data"]] == ["anonymous"]


# -- several wrapper containers, one state store ----------------------------------------------


def two_wrappers(**overrides: Any) -> tuple[FastAPI, FastAPI, FakeTransport]:
    """Two wrapper apps (two containers) over one state store."""
    from deploy.gateway.store import MemoryStore
    from deploy.wrapper import create_app
    from tests.unit_tests.wrapper_fake import make_settings

    store, fake = MemoryStore(), FakeTransport()
    settings = make_settings(api_keys=SecretStr(json.dumps(ENTRIES)), **overrides)
    return create_app(fake, settings, store=store), create_app(fake, settings, store=store), fake


async def sync(*apps: FastAPI) -> None:
    for app in apps:
        await app.state.gateway.sync()


async def test_a_key_s_rate_limit_holds_across_wrapper_containers() -> None:
    one, two, fake = two_wrappers()
    assert (await chat(one, "alice")).status_code == 200
    await sync(one, two)
    assert (await chat(two, "alice")).status_code == 200
    await sync(two, one)
    assert_error(await chat(one, "alice"), 429, type_="rpm")
    assert_error(await chat(two, "alice"), 429, type_="rpm")
    assert len(fake.chat_bodies) == 2


async def test_a_budget_spent_on_one_container_is_spent_on_all() -> None:
    one, two, _ = two_wrappers()
    assert (await chat(one, "dave")).status_code == 200
    assert (await chat(two, "dave")).status_code == 200  # not synced yet: two cannot know
    await sync(one, two)
    assert_error(await chat(two, "dave"), 429, type_="monthly_budget_usd")


async def test_a_key_created_on_one_container_opens_the_others_until_revoked() -> None:
    one, two, _ = two_wrappers()
    async with as_key(one, "default") as admin:
        token = (await admin.post("/v1/keys", json={"name": "gus"})).json()["key"]
    await sync(two)
    async with as_key(two, None) as gus:
        gus.headers["Authorization"] = f"Bearer {token}"
        assert (await gus.get("/status")).status_code == 200
        async with as_key(one, "default") as admin:
            assert (await admin.delete("/v1/keys/gus")).status_code == 204
        await sync(two)
        assert_error(await gus.get("/status"), 401)


async def test_usage_adds_up_every_container_s_rows() -> None:
    one, two, _ = two_wrappers()
    await chat(one, "bob")
    await chat(two, "bob")
    await chat(two, "bob")
    await sync(one, two)
    async with as_key(one, "bob") as client:
        usage = (await client.get("/v1/usage")).json()
    assert usage["totals"]["requests"] == 3 and len(usage["data"]) == 1


async def test_a_body_orjson_cannot_encode_is_still_keyed_and_reserved() -> None:
    """An integer past 64 bits inside a message (vLLM judges it, as before the gateway): the
    cache key and the token reservation must not turn it into a 500."""
    app, fake = gateway_app()
    odd = {"messages": [{"role": "user", "content": "hi", "x": -(2**84)}], "seed": 3,
           "max_tokens": 4}  # fmt: skip
    for name in ("bob", "carol"):  # carol has a tpm limit: her request is reserved
        response = await chat(app, name, odd)
        assert response.status_code == 200, response.text
        assert response.headers["x-cache"] == "miss"
    assert len(fake.chat_bodies) == 2
