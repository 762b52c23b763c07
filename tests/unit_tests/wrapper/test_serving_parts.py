"""The serving layer's seams and its life, offline: what each transport declares it can do
(``deploy/core/contract.py``'s ``AdapterHost`` and ``Describes``, checked with ``isinstance``),
and the drain (``deploy/wrapper/serving/lifecycle.py``): new work refused, what is in flight
let finish, open streams ended with an error event and ``[DONE]``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from deploy.core.contract import AdapterHost, Describes
from deploy.core.errors import EngineUnavailable
from deploy.engine.process import EngineConfig
from deploy.transports.fallback import FallbackTransport
from deploy.transports.local import LocalTransport
from deploy.transports.modal import ModalTransport
from deploy.wrapper import create_app
from deploy.wrapper.serving.service import Serving
from tests.unit_tests.wrapper_fake import (
    FakeTransport,
    assert_error,
    chunk,
    client_for,
    fresh_app,
    make_settings,
    sse_data,
    sse_events,
)

CHAT = "/v1/chat/completions"
ASK: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}


class LoraFake(FakeTransport):
    def __init__(self, model_name: str) -> None:
        super().__init__(model_name)
        self.loaded: dict[str, str] = {}

    def adapters(self) -> dict[str, str]:
        return dict(self.loaded)

    async def load_adapter(self, name: str, path: str) -> None:
        self.loaded[name] = path

    async def unload_adapter(self, name: str) -> None:
        self.loaded.pop(name)


def _declares_adapters(transport: LoraFake) -> AdapterHost:
    return transport  # mypy checks that the fake is an AdapterHost


def test_each_transport_declares_what_it_can_do() -> None:
    config = EngineConfig(model="m", served_model_name="m", enable_lora=True,
                          lora_modules={"a": "/a"})  # fmt: skip
    local = LocalTransport(config)
    modal = ModalTransport(object, model_name="m", scaledown_window=60.0)
    fallback = FallbackTransport("http://fallback.invalid", None, None)
    assert isinstance(local, AdapterHost) and isinstance(local, Describes)
    assert local.engine_config() is local.engine.config and local.adapters() == {"a": "/a"}
    assert isinstance(modal, AdapterHost) and not isinstance(modal, Describes)
    assert modal.adapters() == {}  # the settings' adapters only (the registry adds those)
    for plain in (fallback, FakeTransport()):
        assert not isinstance(plain, AdapterHost) and not isinstance(plain, Describes)
    assert isinstance(LoraFake("big"), AdapterHost)


async def test_the_registry_serves_what_an_adapter_host_says_it_will() -> None:
    big = LoraFake("big")
    big.loaded = {"warm-one": "/a/warm-one"}
    app = create_app({"small": FakeTransport("small"), "big": big}, make_settings())
    async with client_for(app) as client:
        cards = (await client.get("/v1/models")).json()["data"]
        answered = await client.post(CHAT, json={**ASK, "model": "warm-one"})
    assert {c["id"]: c.get("parent") for c in cards} == {
        "small": None, "big": None, "warm-one": "big",
    }  # fmt: skip
    assert answered.status_code == 200 and big.chat_bodies[-1]["model"] == "warm-one"


async def test_an_adapter_on_a_model_that_cannot_unload_stays_served() -> None:
    models = [{"name": "small", "adapters": {"fixed": "/adapters/fixed"}}, {"name": "big"}]
    app = create_app({"small": FakeTransport("small"), "big": LoraFake("big")},
                     make_settings(models=json.dumps(models)))  # fmt: skip
    async with client_for(app) as client:
        refused = await client.delete("/v1/adapters/fixed")
        ids = [card["id"] for card in (await client.get("/v1/models")).json()["data"]]
    assert_error(refused, 400, param="name")
    assert "fixed" in ids


async def test_a_draining_wrapper_refuses_new_work_and_counts_none_in_flight() -> None:
    app, fake = fresh_app()
    service: Serving = app.state.service
    async with client_for(app) as client:
        fake.chat_error = EngineUnavailable("engine connection lost")
        assert (await client.post(CHAT, json=ASK)).status_code == 503
        fake.chat_error = None
        assert (await client.post(CHAT, json=ASK)).status_code == 200
        assert service.lifecycle.in_flight == 0  # released on failure and on success
        await service.drain(0.1)
        assert service.draining
        for body in (ASK, {**ASK, "stream": True}):
            refused = await client.post(CHAT, json=body)
            assert_error(refused, 503)
            assert refused.headers["retry-after"] == "1"
        batch = await client.post(f"{CHAT}/batch", json={"requests": [ASK]})
        assert_error(batch, 503)
    assert len(fake.chat_bodies) == 2 and fake.stream_bodies == [] and fake.batch_calls == []


async def test_the_drain_ends_an_open_stream_with_an_error_then_done() -> None:
    app, fake = fresh_app()
    service: Serving = app.state.service
    fake.stream_chunks = [chunk("Hel"), chunk("lo")]
    fake.stream_hang_at = 1  # the engine goes quiet after the first chunk
    async with client_for(app) as client:
        request = asyncio.ensure_future(client.post(CHAT, json={**ASK, "stream": True}))
        for _ in range(200):
            if service.lifecycle.streams:
                break
            await asyncio.sleep(0.01)
        assert len(service.lifecycle.streams) == 1
        await service.drain(0.05)
        response = await asyncio.wait_for(request, 5)
    data = sse_data(sse_events(response.text))
    assert response.status_code == 200
    assert data[0]["choices"][0]["delta"]["content"] == "Hel"
    assert data[-2]["error"]["type"] and "shut down" in data[-2]["error"]["message"]
    assert data[-1] == "[DONE]"
    assert service.lifecycle.streams == set() and fake.streams_closed == 1
