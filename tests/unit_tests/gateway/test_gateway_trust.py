"""The gateway as a hostile caller and an auditor would try it, over the fake transport:
closed from the first request after a restart, a store that fails (reads, writes, at
shutdown) never opening it nor losing rows, every streamed token booked, budgets that hold
under concurrency, per-key prefix caches."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from deploy.gateway.store import MemoryStore
from deploy.wrapper import create_app
from tests.unit_tests.wrapper_fake import (
    BASE_URL,
    KEY,
    FakeTransport,
    assert_error,
    chunk,
    drop_stream,
    make_settings,
    usage_chunk,
)

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
ALICE = "alice-" + "a" * 40
ENTRIES = [{"name": "alice", "key": ALICE}]


class FlakyStore(MemoryStore):
    """A memory store whose reads or writes fail on demand (a full disk, a Dict error)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_reads = False
        self.fail_writes = False

    def _check(self, write: bool) -> None:
        if self.fail_writes if write else self.fail_reads:
            raise OSError(28, "No space left on device")

    def put_many(self, table: str, docs: Mapping[str, Any]) -> None:
        self._check(True)
        super().put_many(table, docs)

    def delete(self, table: str, key: str) -> bool:
        self._check(True)
        return super().delete(table, key)

    def get(self, table: str, key: str) -> Any:
        self._check(False)
        return super().get(table, key)

    def items(self, table: str, prefix: str = "") -> Iterator[tuple[str, Any]]:
        self._check(False)
        return super().items(table, prefix)


def wrapper(store: Any, fake: FakeTransport | None = None, **overrides: Any) -> FastAPI:
    """A wrapper app (a new process or container) on ``store``; no key configured unless
    ``overrides`` say so."""
    settings = make_settings(**({"wrapper_api_key": None} | overrides))
    return create_app(fake or FakeTransport(), settings, store=store)


async def call(
    app: FastAPI, method: str, path: str, token: str | None = None, **kw: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=headers, timeout=5
    ) as client:
        return await client.request(method, path, **kw)


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"messages": MESSAGES, **extra}


async def usage_of(app: FastAPI, token: str | None = KEY, **params: Any) -> dict[str, Any]:
    response = await call(app, "GET", "/v1/usage", token, params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# -- closed by default, decided before the first request -----------------------------------------


async def test_a_restarted_wrapper_whose_keys_were_made_at_run_time_is_closed_at_once() -> None:
    store = MemoryStore()
    first = wrapper(store)
    made = await call(first, "POST", "/v1/keys", json={"name": "ops", "role": "admin"})
    assert made.status_code == 201, made.text
    ops = made.json()["key"]
    restarted = wrapper(store)  # no sync has run: its very first request decides
    for method, path, kw in (
        ("GET", "/v1/keys", {}),
        ("POST", "/v1/keys", {"json": {"name": "mallory", "role": "admin"}}),
        ("POST", CHAT, {"json": chat_body()}),
        ("GET", "/status", {}),
        ("GET", "/v1/usage", {}),
        ("GET", "/openapi.json", {}),
    ):
        assert_error(await call(restarted, method, path, **kw), 401)
    assert (await call(restarted, "GET", "/health")).status_code == 200
    assert (await call(restarted, "GET", "/")).status_code == 200
    assert (await call(restarted, "GET", "/v1/keys", ops)).status_code == 200
    assert [doc for name, doc in store.items("keys")] and store.get("keys", "mallory") is None
    assert "closed" in made.json()["closed_wrapper"]  # the operator was told


async def test_a_store_that_once_held_a_key_never_opens_a_wrapper_again() -> None:
    store = MemoryStore()
    first = wrapper(store)
    ops = (await call(first, "POST", "/v1/keys", json={"name": "ops", "role": "admin"})).json()
    assert (await call(first, "DELETE", "/v1/keys/ops", ops["key"])).status_code == 204
    assert not list(store.items("keys"))
    later = wrapper(store)
    assert_error(await call(later, "POST", CHAT, json=chat_body()), 401)
    assert_error(await call(later, "POST", "/v1/keys", json={"name": "mallory"}), 401)


async def test_a_store_whose_keys_predate_the_seal_is_closed_and_sealed() -> None:
    store = MemoryStore()
    (await call(wrapper(store), "POST", "/v1/keys", json={"name": "ops"}))
    store.delete("meta", "sealed")  # as a store written before the seal existed
    app = wrapper(store)
    assert_error(await call(app, "GET", "/v1/keys"), 401)
    await app.state.gateway.sync()
    assert store.get("meta", "sealed") is not None


async def test_an_unreadable_store_never_opens_the_wrapper() -> None:
    store = FlakyStore()
    store.fail_reads = store.fail_writes = True
    app = wrapper(store)
    for token in (None, "vak-guess"):
        error = assert_error(await call(app, "POST", CHAT, token, json=chat_body()), 503)
        assert error["type"] == "state_store_unavailable" and "memory://" in error["message"]
    assert_error(await call(app, "POST", "/v1/keys", json={"name": "mallory"}), 503)
    store.fail_reads = store.fail_writes = False
    await app.state.gateway.sync()  # the store is back: a fresh read shows it never held a key
    assert (await call(app, "POST", CHAT, json=chat_body())).status_code == 200


async def test_configured_keys_keep_working_while_the_store_cannot_be_read() -> None:
    store = FlakyStore()
    store.fail_reads = store.fail_writes = True
    app = wrapper(store, wrapper_api_key=SecretStr(KEY))
    assert (await call(app, "POST", CHAT, KEY, json=chat_body())).status_code == 200
    assert_error(await call(app, "POST", CHAT, json=chat_body()), 401)  # no key: closed anyway
    assert_error(await call(app, "POST", CHAT, "vak-maybe-stored", json=chat_body()), 503)


async def test_stored_keys_stop_after_the_grace_period_of_an_unreachable_store() -> None:
    store = FlakyStore()
    ops = (await call(wrapper(store), "POST", "/v1/keys", json={"name": "ops"})).json()["key"]
    app = wrapper(store, state_key_grace=0.2)
    assert (await call(app, "POST", CHAT, ops, json=chat_body())).status_code == 200
    store.fail_reads = True
    await app.state.gateway.sync()
    await asyncio.sleep(0.3)
    assert_error(await call(app, "POST", CHAT, ops, json=chat_body()), 503)


async def test_require_key_closes_a_wrapper_with_no_key_at_all() -> None:
    app = wrapper(MemoryStore(), require_key=True)
    assert_error(await call(app, "POST", CHAT, json=chat_body()), 401)
    assert_error(await call(app, "GET", "/v1/keys"), 401)


async def test_the_start_says_whether_the_wrapper_is_open_and_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vllm_autoscale.gateway")
    store = MemoryStore()
    await wrapper(store).state.gateway.start()
    assert "the wrapper is OPEN" in caplog.text
    caplog.clear()
    await call(wrapper(store), "POST", "/v1/keys", json={"name": "ops"})
    await wrapper(store).state.gateway.start()
    assert "the wrapper is closed: 0 configured key(s), 1 stored" in caplog.text


async def test_an_admin_body_is_not_parsed_before_the_key_is_checked() -> None:
    app = wrapper(MemoryStore(), wrapper_api_key=SecretStr(KEY))
    for body in (b"{not json", b'{"name": 5}'):
        assert_error(await call(app, "POST", "/v1/keys", content=body), 401)
    assert_error(await call(app, "POST", "/v1/keys", KEY, content=b'{"name": 5}'), 422,
                 param="name")  # fmt: skip


# -- a store that fails degrades, never opens, loses nothing ---------------------------------------


async def test_failed_writes_do_not_stop_reading_revocations() -> None:
    store, fake = FlakyStore(), FakeTransport()
    one = wrapper(store, fake, wrapper_api_key=SecretStr(KEY))
    two = wrapper(store, fake, wrapper_api_key=SecretStr(KEY))
    gus = (await call(one, "POST", "/v1/keys", KEY, json={"name": "gus"})).json()["key"]
    assert (await call(two, "POST", CHAT, gus, json=chat_body())).status_code == 200
    assert (await call(one, "DELETE", "/v1/keys/gus", KEY)).status_code == 204
    store.fail_writes = True  # two's ledger cannot be written (a full disk)
    assert await two.state.gateway.sync() is False
    assert_error(await call(two, "POST", CHAT, gus, json=chat_body()), 401)


async def test_failed_writes_do_not_stop_reading_other_wrappers_counts() -> None:
    store, fake = FlakyStore(), FakeTransport()
    entries = SecretStr(json.dumps([{"name": "alice", "key": ALICE, "rpm": 2}]))
    one = wrapper(store, fake, api_keys=entries)
    two = wrapper(store, fake, api_keys=entries)
    for _ in range(2):
        assert (await call(one, "POST", CHAT, ALICE, json=chat_body())).status_code == 200
    await one.state.gateway.sync()
    store.fail_writes = True
    await two.state.gateway.sync()
    assert_error(await call(two, "POST", CHAT, ALICE, json=chat_body()), 429, type_="rpm")


async def test_store_failures_are_counted_in_metrics_and_the_usage_route_answers_503() -> None:
    store = FlakyStore()
    app = wrapper(store, wrapper_api_key=SecretStr(KEY))
    assert (await call(app, "POST", CHAT, KEY, json=chat_body())).status_code == 200
    store.fail_reads = store.fail_writes = True
    await app.state.gateway.sync()
    error = assert_error(await call(app, "GET", "/v1/usage", KEY), 503)
    assert error["type"] == "state_store_unavailable" and "memory://" in error["message"]
    metrics = (await call(app, "GET", "/metrics", KEY)).text
    assert 'vllm_autoscale_state_store_errors_total{op="write ledger"} 1.0' in metrics
    assert 'vllm_autoscale_state_store_errors_total{op="read keys"} 1.0' in metrics
    assert 'vllm_autoscale_state_store_errors_total{op="read ledger"} 1.0' in metrics
    status = (await call(app, "GET", "/status", KEY)).json()["state_store"]
    assert status["ok"] is False and status["failures"]["read keys"] == 1
    assert "No space left" in status["last_error"] and status["url"] == "memory://"
    store.fail_reads = store.fail_writes = False
    assert (await app.state.gateway.sync()) is True
    status = (await call(app, "GET", "/status", KEY)).json()["state_store"]
    assert status["ok"] is True and status["consecutive_failures"] == 0
    assert (await usage_of(app))["totals"]["requests"] == 1  # nothing lost meanwhile


async def test_key_management_with_the_store_down_answers_503_and_changes_nothing() -> None:
    store = FlakyStore()
    app = wrapper(store, wrapper_api_key=SecretStr(KEY))
    gus = (await call(app, "POST", "/v1/keys", KEY, json={"name": "gus"})).json()["key"]
    store.fail_writes = True
    error = assert_error(await call(app, "POST", "/v1/keys", KEY, json={"name": "hal"}), 503)
    assert error["type"] == "state_store_unavailable" and "memory://" in error["message"]
    assert_error(await call(app, "DELETE", "/v1/keys/gus", KEY), 503)
    store.fail_writes = False
    assert (await call(app, "POST", CHAT, gus, json=chat_body())).status_code == 200
    assert store.get("keys", "hal") is None


async def test_a_shutdown_with_the_store_down_closes_transports_and_spills_the_rows(
    tmp_path: Path,
) -> None:
    store, fake = FlakyStore(), FakeTransport()
    url = f"sqlite:///{tmp_path / 'unused.sqlite3'}"  # any URL but memory:// spills
    settings = {"wrapper_api_key": SecretStr(KEY), "state_url": url,
                "state_spill_dir": tmp_path / "spill"}  # fmt: skip
    app = wrapper(store, fake, **settings)
    async with app.router.lifespan_context(app):
        for _ in range(3):
            assert (await call(app, "POST", CHAT, KEY, json=chat_body())).status_code == 200
        store.fail_writes = True
    assert fake.closed  # the transports were closed although the last flush failed
    assert not list(store.items("ledger"))
    assert len(list((tmp_path / "spill").glob("*.json"))) == 1
    store.fail_writes = False
    restarted = wrapper(store, FakeTransport(), **settings)
    async with restarted.router.lifespan_context(restarted):
        usage = await usage_of(restarted)
    assert usage["totals"]["requests"] == 3 and usage["totals"]["prompt_tokens"] == 21
    assert not list((tmp_path / "spill").glob("*.json"))


# -- every token the engine produced is booked ----------------------------------------------------


def stream_body(**extra: Any) -> dict[str, Any]:
    return {"messages": MESSAGES, "stream": True, **extra}


async def test_a_stream_dropped_after_its_first_chunk_is_booked_with_what_was_produced() -> None:
    fake = FakeTransport()
    app = wrapper(MemoryStore(), fake, wrapper_api_key=SecretStr(KEY))
    fake.stream_chunks = [chunk("a"), chunk("b"), chunk("c")]  # and no usage chunk: dropped
    fake.stream_hang_at = 3
    for _ in range(3):
        sent = await drop_stream(app, stream_body(), KEY, after=1)
        assert sent[0]["status"] == 200
    totals = (await usage_of(app))["totals"]
    assert totals["requests"] == 3 and totals["prompt_tokens"] > 0
    assert totals["completion_tokens"] == 9  # a token a chunk: the fake has no tokenizer
    assert totals["estimated"] == 3


async def test_a_dropped_stream_whose_usage_the_engine_sent_is_booked_exactly() -> None:
    fake = FakeTransport()
    app = wrapper(MemoryStore(), fake, wrapper_api_key=SecretStr(KEY))
    fake.stream_chunks = [chunk("a"), chunk("b"), usage_chunk(11, 2)]
    fake.stream_hang_at = 3  # the engine sent everything; the client left after "a"
    await drop_stream(app, stream_body(), KEY, after=1)
    totals = (await usage_of(app))["totals"]
    assert (totals["prompt_tokens"], totals["completion_tokens"], totals["estimated"]) == (
        11, 2, 0)  # fmt: skip


async def test_a_stream_that_fails_part_way_is_booked() -> None:
    fake = FakeTransport()
    app = wrapper(MemoryStore(), fake, wrapper_api_key=SecretStr(KEY))
    fake.stream_chunks = [chunk("a"), chunk("b"), usage_chunk()]
    fake.stream_error_at = 2
    response = await call(app, "POST", CHAT, KEY, json=stream_body())
    assert "engine connection lost" in response.text
    totals = (await usage_of(app))["totals"]
    assert (totals["requests"], totals["completion_tokens"]) == (1, 2)
    assert totals["estimated"] == 1


async def test_a_fallback_stream_without_usage_is_booked_to_the_key() -> None:
    engine, fallback = FakeTransport(), FakeTransport(model_name="gpt-fallback")
    fallback.engine_status.state = "warm"
    fallback.stream_chunks = [chunk("x"), chunk("y")]  # an upstream that sends no usage
    settings = make_settings(cold_fallback_url="http://fallback/v1", cold_fallback_policy="always")
    app = create_app(engine, settings, store=MemoryStore(), fallback=fallback)
    response = await call(app, "POST", CHAT, KEY, json=stream_body())
    assert response.headers["x-served-by"] == "fallback"
    rows = (await usage_of(app))["data"]
    assert [(r["model"], r["completion_tokens"], r["estimated"]) for r in rows] == [
        ("gpt-fallback", 2, 1)]  # fmt: skip


async def test_a_stream_dropped_during_the_tool_call_hold_is_booked() -> None:
    """Tool-call pieces are held until whole (tool_stream.py): the client may see nothing of
    them before it leaves, but they were produced."""
    fake = FakeTransport()
    app = wrapper(MemoryStore(), fake, wrapper_api_key=SecretStr(KEY))
    call_piece = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [
        {"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                               "function": {"name": "f", "arguments": "{"}}]},
         "finish_reason": None}]}  # fmt: skip
    fake.stream_chunks = [chunk("ok"), call_piece, call_piece]
    fake.stream_hang_at = 3
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    await drop_stream(app, stream_body(tools=tools), KEY, after=1)
    totals = (await usage_of(app))["totals"]
    assert totals["completion_tokens"] == 3
    assert totals["estimated"] == 1


async def test_batch_items_are_booked_under_the_adapter_each_named() -> None:
    fake = FakeTransport()
    settings = {"adapters": {"tuned": "/adapters/tuned"}, "wrapper_api_key": SecretStr(KEY)}
    app = wrapper(MemoryStore(), fake, **settings)
    body = {"requests": [{"messages": MESSAGES, "model": "tuned"}, {"messages": MESSAGES}]}
    response = await call(app, "POST", "/v1/chat/completions/batch", KEY, json=body)
    assert response.status_code == 200, response.text
    rows = {r["model"]: r for r in (await usage_of(app))["data"]}
    assert set(rows) == {"tuned", fake.model_name}
    assert rows["tuned"]["requests"] == 1 and rows["tuned"]["prompt_tokens"] == 7


# -- budgets that hold under concurrency ----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_concurrent_requests_overrun_a_budget_by_at_most_one_request(stream: bool) -> None:
    fake = FakeTransport()
    fake.stream_delay = 0.05  # every request is in flight at once
    budget = 1e-5  # smaller than one request's assumed cost (10 GPU s at $2.50/h)
    entries = [{"name": "alice", "key": ALICE, "monthly_budget_usd": budget}]
    app = wrapper(MemoryStore(), fake, api_keys=SecretStr(json.dumps(entries)))
    original = fake.chat

    async def slow_chat(body: dict[str, Any]) -> Any:
        await asyncio.sleep(0.05)
        return await original(body)

    fake.chat = slow_chat  # type: ignore[method-assign]
    body = stream_body() if stream else chat_body()
    answers = await asyncio.gather(*(call(app, "POST", CHAT, ALICE, json=body) for _ in range(50)))
    assert sum(r.status_code == 200 for r in answers) == 1
    refused = [r for r in answers if r.status_code == 429]
    assert len(refused) == 49
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in refused)


async def test_a_budget_holds_for_the_next_request_once_in_flight_ones_are_booked() -> None:
    entries = [{"name": "alice", "key": ALICE, "monthly_budget_usd": 1.0}]
    app = wrapper(MemoryStore(), api_keys=SecretStr(json.dumps(entries)),
                  request_cost_estimate_usd=0.4)  # fmt: skip
    gateway = app.state.gateway
    await gateway.start()
    alice = gateway.keys.get("alice")
    held = [gateway.admit(alice, [{}]) for _ in range(3)]  # 0, 0.4, 0.8 held: all under 1.0
    with pytest.raises(Exception, match="monthly budget"):
        gateway.admit(alice, [{}])
    held[0].settle(0)
    gateway.admit(alice, [{}])  # a request's hold is released when it is settled


async def test_a_restarted_wrapper_knows_the_month_s_spend_before_its_first_request() -> None:
    store = FlakyStore()
    entries = SecretStr(json.dumps([{"name": "alice", "key": ALICE, "monthly_budget_usd": 1e-9}]))
    first = wrapper(store, api_keys=entries)
    assert (await call(first, "POST", CHAT, ALICE, json=chat_body())).status_code == 200
    await first.state.gateway.aclose()
    restarted = wrapper(store, api_keys=entries)
    assert_error(await call(restarted, "POST", CHAT, ALICE, json=chat_body()), 429,
                 type_="monthly_budget_usd")  # fmt: skip
    store.fail_reads = True  # and a wrapper that cannot read the spend does not guess
    blind = wrapper(store, api_keys=entries)
    assert_error(await call(blind, "POST", CHAT, ALICE, json=chat_body()), 503)


def test_the_token_reservation_counts_n_and_the_tools() -> None:
    app = wrapper(MemoryStore())
    gateway = app.state.gateway
    plain = gateway.reserve({"messages": MESSAGES, "max_tokens": 100})
    assert gateway.reserve({"messages": MESSAGES, "max_tokens": 100, "n": 4}) == plain + 300
    tools = [{"type": "function", "function": {"name": "f", "description": "x" * 400}}]
    assert gateway.reserve({"messages": MESSAGES, "max_tokens": 100, "tools": tools}) > plain + 100


def test_the_token_reservation_counts_every_route_s_prompt_and_output_cap() -> None:
    """Text completions carry their prompt in ``prompt``, Responses in ``input`` and
    ``instructions`` and their cap in ``max_output_tokens``: each counts like chat's."""
    gateway = wrapper(MemoryStore()).state.gateway
    text = "x" * 4000  # about 1,000 tokens
    chat = gateway.reserve({"messages": [{"role": "user", "content": text}], "max_tokens": 10})
    assert chat > 1000
    completion = gateway.reserve({"prompt": text, "max_tokens": 10})
    response = gateway.reserve({"input": text, "max_output_tokens": 10})
    instructed = gateway.reserve({"input": "hi", "instructions": text, "max_output_tokens": 10})
    for held in (completion, response, instructed):
        assert abs(held - chat) <= 20, (held, chat)
    assert gateway.reserve({"input": "hi", "max_output_tokens": 500}) >= 500


# -- prefix caches per key ------------------------------------------------------------------------


async def test_per_key_prefix_cache_isolation_salts_every_request_by_key() -> None:
    fake = FakeTransport()
    entries = SecretStr(json.dumps(ENTRIES))
    app = wrapper(MemoryStore(), fake, api_keys=entries, wrapper_api_key=SecretStr(KEY),
                  prefix_cache_isolation="per_key")  # fmt: skip
    await call(app, "POST", CHAT, KEY, json=chat_body(cache_salt="alice-guess"))
    await call(app, "POST", CHAT, ALICE, json=chat_body())
    await call(app, "POST", CHAT, ALICE, json=stream_body())
    admin, alice, alice_stream = (b["cache_salt"] for b in fake.chat_bodies + fake.stream_bodies)
    assert admin != alice == alice_stream and "alice-guess" not in (admin, alice)
    shared = wrapper(MemoryStore(), fake, wrapper_api_key=SecretStr(KEY))
    fake.reset()
    await call(shared, "POST", CHAT, KEY, json=chat_body())
    assert "cache_salt" not in fake.chat_bodies[0]  # off by default: vLLM's shared cache
