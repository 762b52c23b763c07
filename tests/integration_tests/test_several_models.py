"""Several models behind one wrapper on the live stack: the session's engine (the default
model) and a second engine, the shipped SmolLM2 served as "smol-lora" with a LoRA adapter the
tests make with peft. Routing by name, one model's cold start beside the other's warm
traffic, each scaling to zero on its own, and an adapter loaded and unloaded at run time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from deploy.engine.local_model import LOCAL_MODEL_NAME, local_engine_config, prepare_local_model
from deploy.settings.settings import Settings
from deploy.transports.local import LocalTransport
from deploy.wrapper import create_app
from tests.integration_tests.conftest import API_KEY, ENGINE_LOG, serve_on_stack
from tests.lora_adapters import make_adapter

AUTH = {"authorization": f"Bearer {API_KEY}"}
PROMPT = [{"role": "user", "content": "Write one sentence about the sea."}]
SECOND = "smol-lora"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root, base = tmp_path_factory.mktemp("adapters"), prepare_local_model()
    seeds = {"tuned": 0, "tuned2": 1}
    return {name: make_adapter(base, root / name, seed) for name, seed in seeds.items()}


@pytest.fixture(scope="module")
def two_models(stack, adapters) -> Iterator[tuple[str, LocalTransport]]:
    """A wrapper serving the session's model and, cold at first, the second engine."""
    warm_stack = stack
    warm_stack.wait_warm()
    config = local_engine_config(
        log_file=str(ENGINE_LOG.with_suffix(".second.log")), served_name=SECOND,
        enable_lora=True, lora_modules={"tuned": str(adapters["tuned"])},
    )  # fmt: skip
    second = LocalTransport(config, scaledown_window=None)
    settings = Settings(wrapper_api_key=SecretStr(API_KEY), state_url="memory://",
                        cache_max_entries=0)  # fmt: skip
    app = create_app({LOCAL_MODEL_NAME: warm_stack.transport, SECOND: second}, settings)
    try:
        with serve_on_stack(warm_stack, app) as url:
            yield url, second
    finally:
        warm_stack.call(second.aclose)  # its engine goes; the session's stays


def ask(http: httpx.Client, model: str | None, max_tokens: int = 8) -> httpx.Response:
    body = {"messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    return http.post("/v1/chat/completions", json=body | ({"model": model} if model else {}))


def test_a_cold_model_boots_while_the_warm_one_keeps_answering(warm_stack, two_models) -> None:
    url, second = two_models
    assert second.state == "cold"
    with httpx.Client(base_url=url, headers=AUTH, timeout=600) as http:
        cold: dict[str, object] = {}

        def wake_second() -> None:
            response = ask(http, SECOND)
            cold.update(response=response, done_at=time.monotonic())

        waiting = threading.Thread(target=wake_second)
        waiting.start()
        time.sleep(1)
        warm: list[tuple[httpx.Response, float]] = []
        for _ in range(5):
            response = ask(http, None)
            warm.append((response, time.monotonic()))
        during = http.get("/status").json()["models"][SECOND]["state"]
        waiting.join()
    for response, _ in warm:
        assert response.status_code == 200 and response.headers["x-cold-start"] == "false"
        assert response.json()["model"] == LOCAL_MODEL_NAME
    assert during == "starting"  # the default model answered all five meanwhile
    assert max(at for _, at in warm) < cold["done_at"]
    response = cold["response"]
    assert isinstance(response, httpx.Response) and response.status_code == 200
    assert response.headers["x-cold-start"] == "true" and response.json()["model"] == SECOND


def test_models_and_adapters_are_routed_by_name_and_listed_with_their_state(two_models) -> None:
    url, _ = two_models
    with httpx.Client(base_url=url, headers=AUTH, timeout=300) as http:
        answers = {name: ask(http, name) for name in (LOCAL_MODEL_NAME, SECOND, "tuned")}
        cards = {c["id"]: c for c in http.get("/v1/models").json()["data"]}
        unknown = ask(http, "smol-huge")
    texts = {name: r.json()["choices"][0]["message"]["content"] for name, r in answers.items()}
    assert {name: r.json()["model"] for name, r in answers.items()} == {
        LOCAL_MODEL_NAME: LOCAL_MODEL_NAME, SECOND: SECOND, "tuned": "tuned"}  # fmt: skip
    assert texts["tuned"] != texts[SECOND]  # the adapter is applied (temperature 0)
    assert set(cards) == {LOCAL_MODEL_NAME, SECOND, "tuned"}
    assert cards[SECOND]["state"] == "warm" and cards["tuned"]["parent"] == SECOND
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
    for name in (LOCAL_MODEL_NAME, SECOND, "tuned"):
        assert repr(name) in unknown.json()["error"]["message"]


def test_an_adapter_loads_and_unloads_at_run_time(two_models, adapters) -> None:
    url, second = two_models
    with httpx.Client(base_url=url, headers=AUTH, timeout=300) as http:
        loaded = http.post("/v1/adapters", json={"name": "tuned2", "base": SECOND,
                                                 "path": str(adapters["tuned2"])})  # fmt: skip
        served = ask(http, "tuned2")
        listed = {c["id"] for c in http.get("/v1/models").json()["data"]}
        removed = http.delete("/v1/adapters/tuned2")
        gone = ask(http, "tuned2")
    assert loaded.status_code == 201, loaded.text
    assert served.status_code == 200 and served.json()["model"] == "tuned2"
    assert "tuned2" in listed and removed.status_code == 204
    assert gone.status_code == 404 and "tuned2" not in second.adapters()


def test_each_model_scales_to_zero_on_its_own(warm_stack, two_models) -> None:
    url, second = two_models
    second.scaledown_window = 2.0
    try:
        warm_stack.call(_idle_watch(second))
        deadline = time.monotonic() + 60
        while second.state != "cold":
            assert time.monotonic() < deadline, "the second model did not scale to zero"
            time.sleep(0.2)
        status = httpx.get(url + "/status", headers=AUTH, timeout=30).json()
    finally:
        second.scaledown_window = None
    assert status["models"][SECOND]["state"] == "cold"
    assert status["models"][LOCAL_MODEL_NAME]["state"] == "warm"


def _idle_watch(transport: LocalTransport):
    async def start() -> None:
        transport._ensure_idle_watch()

    return start
