"""Several models behind one wrapper, over fake transports: routing by name (adapters to their
base), the model list without waking anything, status per model, batches per model, warm-up
per model, per-model prices, and adapters loaded and unloaded at run time."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from deploy.wrapper import create_app
from tests.unit_tests.wrapper_fake import (
    BASE_URL,
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
MESSAGES = [{"role": "user", "content": "hi"}]
MODELS = [
    {"name": "small", "gpu_price_per_hour": 1.0},
    {"name": "big", "gpu_price_per_hour": 10.0, "adapters": {"tuned": "/adapters/tuned"}},
]


class LoraFake(FakeTransport):
    """A fake transport whose engine takes adapters at run time."""

    def __init__(self, model_name: str) -> None:
        super().__init__(model_name)
        self.loaded: dict[str, str] = {}

    def adapters(self) -> dict[str, str]:
        return dict(self.loaded)

    async def load_adapter(self, name: str, path: str) -> None:
        self.loaded[name] = path

    async def unload_adapter(self, name: str) -> None:
        self.loaded.pop(name)


USER_KEY = "user-" + "u" * 40


def two_models(**overrides: Any) -> tuple[FastAPI, FakeTransport, LoraFake]:
    small, big = FakeTransport("small"), LoraFake("big")
    small.chat_result, big.chat_result = completion("from small"), completion("from big")
    big.engine_status.state = "warm"
    settings = make_settings(models=json.dumps(MODELS), **overrides)
    return create_app({"small": small, "big": big}, settings), small, big


def with_user(**overrides: Any) -> tuple[FastAPI, FakeTransport, LoraFake]:
    """``two_models`` with a user key (``USER_KEY``) beside the admin one."""
    user = [{"name": "user", "key": USER_KEY}]
    return two_models(api_keys=SecretStr(json.dumps(user)), **overrides)


def as_user(app: FastAPI, token: str | None = USER_KEY) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL,
                             headers=headers, timeout=5.0)  # fmt: skip


def ask(model: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"messages": MESSAGES, **({"model": model} if model else {}), **extra}


async def test_the_model_field_routes_each_request_and_adapters_go_to_their_base() -> None:
    app, small, big = two_models()
    async with client_for(app) as client:
        default = await client.post(CHAT, json=ask())
        to_big = await client.post(CHAT, json=ask("big"))
        to_adapter = await client.post(CHAT, json=ask("tuned"))
    assert to_adapter.json()["choices"][0]["message"]["content"] == "from big"
    assert default.json()["choices"][0]["message"]["content"] == "from small"
    assert to_big.json()["choices"][0]["message"]["content"] == "from big"
    assert [b["model"] for b in small.chat_bodies] == ["small"]
    assert [b["model"] for b in big.chat_bodies] == ["big", "tuned"]  # vLLM serves the adapter


async def test_an_unknown_name_is_404_listing_every_name_served() -> None:
    app, small, big = two_models()
    async with client_for(app) as client:
        response = await client.post(CHAT, json=ask("huge"))
    error = assert_error(response, 404, param="model")
    for name in ("small", "big", "tuned"):
        assert repr(name) in error["message"]
    assert small.chat_bodies == big.chat_bodies == []


async def test_the_model_list_shows_each_state_and_adapters_without_waking_anything() -> None:
    app, small, big = two_models()
    async with client_for(app) as client:
        cards = {c["id"]: c for c in (await client.get("/v1/models")).json()["data"]}
    assert set(cards) == {"small", "big", "tuned"}
    assert cards["small"]["state"] == "cold" and cards["big"]["state"] == "warm"
    assert cards["tuned"]["parent"] == "big" and cards["tuned"]["root"] == "/adapters/tuned"
    assert small.status_calls == big.status_calls == 0 and small.warmups == big.warmups == 0


async def test_status_and_warmup_per_model() -> None:
    app, small, big = two_models()
    async with client_for(app) as client:
        status = (await client.get("/status")).json()
        warmed = await client.post("/warmup", params={"model": "big"})
    assert status["model"] == "small" and status["state"] == "cold"  # the default, as before
    assert {n: s["state"] for n, s in status["models"].items()} == {"small": "cold", "big": "warm"}
    assert warmed.status_code == 202 and warmed.json()["model"] == "big"
    assert (small.warmups, big.warmups) == (0, 1)


async def test_a_stream_goes_to_its_model() -> None:
    app, small, big = two_models()
    big.stream_chunks = [chunk("b"), chunk("ig")]
    async with client_for(app) as client:
        response = await client.post(CHAT, json=ask("big", stream=True))
    events = sse_data(sse_events(response.text))
    assert "".join(e["choices"][0]["delta"]["content"] for e in events[:-1]) == "big"
    assert len(big.stream_bodies) == 1 and small.stream_bodies == []


async def test_a_batch_goes_to_one_model() -> None:
    app, small, big = two_models()
    async with client_for(app) as client:
        mixed = await client.post(CHAT + "/batch",
                                  json={"requests": [ask("big"), ask("small")]})  # fmt: skip
        ok = await client.post(CHAT + "/batch", json={"requests": [ask("big"), ask("tuned")]})
    assert_error(mixed, 422, param="requests.1.model")
    assert ok.status_code == 200 and len(big.batch_calls) == 1 and small.batch_calls == []


async def test_each_answer_is_priced_at_its_model_s_gpu_price() -> None:
    app, small, big = two_models()
    for fake in (small, big):  # long enough for the rounded GPU seconds to tell the prices
        answer = fake.chat

        async def slow(body: dict[str, Any], answer: Any = answer) -> Any:
            await asyncio.sleep(0.2)
            return await answer(body)

        fake.chat = slow  # type: ignore[method-assign]
    async with client_for(app) as client:
        costs = {m: (await client.post(CHAT, json=ask(m))).json()["vllm_autoscale"]["cost"]
                 for m in ("small", "big")}  # fmt: skip
    for model, price in (("small", 1.0), ("big", 10.0)):
        cost = costs[model]
        assert cost["usd"] == pytest.approx(cost["gpu_seconds"] * price / 3600, rel=1e-3)


async def test_the_ledger_has_a_row_per_model_and_adapter() -> None:
    app, _, _ = two_models()
    async with client_for(app) as client:
        for model in ("small", "big", "tuned", "tuned"):
            await client.post(CHAT, json=ask(model))
        rows = (await client.get("/v1/usage")).json()["data"]
    assert {r["model"]: r["requests"] for r in rows} == {"small": 1, "big": 1, "tuned": 2}


async def test_an_admin_loads_and_unloads_an_adapter_at_run_time() -> None:
    app, _, big = two_models()
    async with client_for(app) as client:
        loaded = await client.post("/v1/adapters",
                                   json={"name": "t2", "base": "big", "path": "/a/t2"})  # fmt: skip
        assert loaded.status_code == 201 and loaded.json()["parent"] == "big"
        assert big.loaded == {"t2": "/a/t2"}
        assert (await client.post(CHAT, json=ask("t2"))).status_code == 200
        assert big.chat_bodies[-1]["model"] == "t2"
        assert (await client.delete("/v1/adapters/t2")).status_code == 204
        assert big.loaded == {}
        assert_error(await client.post(CHAT, json=ask("t2")), 404, param="model")
        assert_error(await client.delete("/v1/adapters/t2"), 404, param="name")
        assert_error(await client.post("/v1/adapters", json={"name": "tuned", "path": "/x"}),
                     409, param="name")  # fmt: skip
        no_lora = await client.post("/v1/adapters", json={"name": "t3", "path": "/x"})
        assert_error(no_lora, 400, param="base")  # the default model's transport cannot
        unknown = await client.post("/v1/adapters", json={"name": "t4", "path": "/x",
                                                          "base": "nope"})  # fmt: skip
        assert_error(unknown, 404, param="base")


async def test_a_cache_hit_is_booked_under_the_model_it_was_asked_of() -> None:
    small, big = FakeTransport("small"), LoraFake("big")
    settings = make_settings(models=json.dumps(MODELS), cache_max_entries=8)
    app = create_app({"small": small, "big": big}, settings)
    deterministic = ask("big", temperature=0)
    async with client_for(app) as client:
        await client.post(CHAT, json=deterministic)
        hit = await client.post(CHAT, json=deterministic)
        streamed = await client.post(CHAT, json={**deterministic, "stream": True})
        rows = (await client.get("/v1/usage")).json()["data"]
    assert hit.headers["x-cache"] == "hit" and streamed.headers["x-cache"] == "hit"
    assert [(r["model"], r["requests"], r["cache_hits"]) for r in rows] == [("big", 1, 2)]


async def test_reloading_an_adapter_forgets_its_cached_answers() -> None:
    """New weights under an old name: the cache must not answer with the old ones."""
    app, _, big = two_models(cache_max_entries=8)
    deterministic = ask("t2", temperature=0)
    async with client_for(app) as client:
        await client.post("/v1/adapters", json={"name": "t2", "base": "big", "path": "/a/v1"})
        await client.post(CHAT, json=ask("big", temperature=0))
        await client.post(CHAT, json=deterministic)
        assert (await client.post(CHAT, json=deterministic)).headers["x-cache"] == "hit"
        assert (await client.delete("/v1/adapters/t2")).status_code == 204
        assert len(app.state.gateway.cache) == 1  # big's answer stays
        await client.post("/v1/adapters", json={"name": "t2", "base": "big", "path": "/a/v2"})
        big.chat_result = completion("from the new weights")
        fresh = await client.post(CHAT, json=deterministic)
        assert fresh.headers["x-cache"] == "miss"
        assert fresh.json()["choices"][0]["message"]["content"] == "from the new weights"
        big_again = await client.post(CHAT, json=ask("big", temperature=0))
        assert big_again.headers["x-cache"] == "hit"


async def test_loading_an_adapter_forgets_answers_cached_under_its_name() -> None:
    """What this wrapper cached under the name before (an answer on its way when the adapter
    was unloaded, another container's unload) is not the new adapter's."""
    app, _, _ = two_models(cache_max_entries=8)
    cache = app.state.gateway.cache
    cache.put(cache.key_for("default", {"model": "t3", "temperature": 0}),
              {**completion("stale"), "model": "t3"})  # fmt: skip
    assert len(cache) == 1
    async with client_for(app) as client:
        loaded = await client.post("/v1/adapters",
                                   json={"name": "t3", "base": "big", "path": "/a/t3"})  # fmt: skip
    assert loaded.status_code == 201 and len(cache) == 0


async def test_an_adapter_with_a_hub_style_name_can_be_unloaded() -> None:
    app, _, big = two_models()
    async with client_for(app) as client:
        loaded = await client.post("/v1/adapters", json={"name": "org/tuned-2", "base": "big",
                                                         "path": "/a/org"})  # fmt: skip
        assert loaded.status_code == 201, loaded.text
        assert (await client.post(CHAT, json=ask("org/tuned-2"))).status_code == 200
        assert (await client.delete("/v1/adapters/org/tuned-2")).status_code == 204
        assert big.loaded == {}
        assert_error(await client.post(CHAT, json=ask("org/tuned-2")), 404, param="model")
        assert_error(await client.delete("/v1/adapters/org/tuned-2"), 404, param="name")


@pytest.mark.parametrize("raw", [b"{not json", b'{"name": 1}', b"[]", b""])
async def test_adapter_bodies_are_read_only_after_the_key_is_checked(raw: bytes) -> None:
    app, _, big = with_user()
    post = {"content": raw, "headers": {"content-type": "application/json"}}
    async with as_user(app, None) as nobody, as_user(app) as user:
        assert_error(await nobody.post("/v1/adapters", **post), 401)
        assert_error(await user.post("/v1/adapters", **post), 403, type_="permission_error")
        assert_error(await nobody.delete("/v1/adapters/tuned"), 401)
        assert_error(await user.delete("/v1/adapters/tuned"), 403)
    assert big.loaded == {}


async def test_an_admin_s_bad_adapter_body_names_the_field() -> None:
    app, _, big = with_user()
    async with client_for(app) as admin:
        assert_error(await admin.post("/v1/adapters", json={"name": "t5"}), 422, param="path")
        bad_name = await admin.post("/v1/adapters", json={"name": "a b", "path": "/x"})
        assert_error(bad_name, 422, param="name")
        extra = await admin.post("/v1/adapters", json={"name": "t5", "path": "/x", "x": 1})
        assert_error(extra, 422, param="x")
        assert_error(await admin.post("/v1/adapters", content=b"{not json"), 422)
        schema = (await admin.get("/openapi.json")).json()
    assert big.loaded == {}
    body = schema["paths"]["/v1/adapters"]["post"]["requestBody"]
    documented = body["content"]["application/json"]["schema"]
    if "$ref" in documented:  # a component, or the schema inline: either documents it
        documented = schema["components"]["schemas"][documented["$ref"].rsplit("/", 1)[1]]
    assert body["required"] is True and set(documented["properties"]) == {"name", "path", "base"}
    assert documented["required"] == ["name", "path"]


async def test_a_user_key_sees_no_adapter_source_nor_engine_internals() -> None:
    app, _, big = with_user()
    for fake in (big,):
        fake.engine_status.last_error = "engine at /models/secret crashed"
        fake.engine_status.last_request_at = 1700000000.0
        fake.engine_status.extra = {"engine_pid": 4242, "engine_url": "http://10.0.0.7:8000"}
    async with as_user(app) as user, client_for(app) as admin:
        user_cards = {c["id"]: c for c in (await user.get("/v1/models")).json()["data"]}
        admin_cards = {c["id"]: c for c in (await admin.get("/v1/models")).json()["data"]}
        user_status = (await user.get("/status")).json()
        admin_status = (await admin.get("/status")).json()
        user_warmup = await user.post("/warmup", params={"model": "big"})
        admin_warmup = (await admin.post("/warmup", params={"model": "big"})).json()
    assert user_warmup.status_code == 202 and user_warmup.json()["state"] == "starting"
    assert "engine_pid" not in user_warmup.json() and admin_warmup["engine_pid"] == 4242
    assert set(user_cards) == set(admin_cards) == {"small", "big", "tuned"}
    assert admin_cards["tuned"]["root"] == "/adapters/tuned"  # an admin sees everything
    shown = json.dumps(user_cards)
    assert "/adapters/tuned" not in shown and "root" not in shown
    assert user_cards["tuned"]["parent"] == "big" and user_cards["tuned"]["state"] == "warm"
    for card in user_cards.values():
        assert {"id", "object", "owned_by", "state", "max_model_len"} <= set(card)
    assert admin_status["models"]["big"]["engine_pid"] == 4242
    assert admin_status["models"]["big"]["last_error"] == "engine at /models/secret crashed"
    text = json.dumps(user_status)
    for secret in ("4242", "10.0.0.7", "/models/secret", "engine_pid", "last_error",
                   "last_request_at", "1700000000"):  # fmt: skip
        assert secret not in text, secret
    assert user_status["model"] == "small" and user_status["state"] == "cold"
    assert user_status["queue_depth"] == 2 and user_status["cold_starts"] == 1
    assert user_status["scaledown_window"] == 120.0
    assert user_status["models"]["big"]["state"] == "warm"
