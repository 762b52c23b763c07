"""The GPU container's life, without a GPU: ``InferenceServer`` over an engine stand-in that
records what it is asked (the engine itself is tested against real vLLM elsewhere)."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest

from deploy.config import Settings
from deploy.engine import EngineConfig
from deploy.errors import EngineUnavailable
from deploy.inference import InferenceServer, fetch_weights


class RecordingEngine:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.session_open = False

    async def start(self) -> None:
        self.calls.append("start")

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("chat")
        self.session_open = True  # a pooled connection to vLLM
        return {"choices": [{"message": {"content": "hi"}}]}

    async def sleep(self, level: int = 1) -> None:
        self.calls.append(f"sleep:{level}")

    async def wake_up(self) -> None:
        self.calls.append("wake_up")

    async def aclose(self) -> None:
        self.calls.append("aclose")
        self.session_open = False

    async def health(self) -> bool:
        return getattr(self, "healthy", True)


def server(tmp_path) -> tuple[InferenceServer, RecordingEngine]:
    srv = InferenceServer(EngineConfig(model=str(tmp_path), served_model_name="m"))
    engine = RecordingEngine()
    srv.engine = engine  # type: ignore[assignment]
    return srv, engine


async def test_snapshot_holds_a_warmed_engine_asleep_with_no_open_connection(tmp_path) -> None:
    srv, engine = server(tmp_path)
    await srv.start_for_snapshot()
    assert engine.calls == ["start", "chat", "chat", "sleep:1", "aclose"]
    assert not engine.session_open
    assert srv.container_id == "" and srv.booted_at == 0  # not yet a serving container


async def test_restored_containers_are_told_apart(tmp_path) -> None:
    srv, _ = server(tmp_path)
    await srv.start_for_snapshot()
    restored = [copy.deepcopy(srv) for _ in range(2)]  # two containers from one snapshot
    for container in restored:
        await container.wake_from_snapshot()
    ids = {c.container_id for c in restored}
    assert len(ids) == 2 and all(ids)
    assert all(c.booted_at > 0 for c in restored)
    assert restored[0].engine.calls[-1] == "wake_up"


async def test_plain_start_serves_with_its_own_id(tmp_path) -> None:
    srv, engine = server(tmp_path)
    await srv.start()
    reply = await srv.chat({"messages": []})
    assert engine.calls == ["start", "chat"]
    assert reply.facts is not None and reply.facts.container == srv.container_id != ""
    assert reply.body == {"choices": [{"message": {"content": "hi"}}]}


def test_local_weights_are_used_in_place(tmp_path) -> None:
    assert fetch_weights(str(tmp_path)) == str(tmp_path)


def test_vllm_gets_no_secret_and_no_service_setting(monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("VLLM_WRAPPER_API_KEY", "wrapper-secret")
    monkeypatch.setenv("VLLM_SCALEDOWN_WINDOW", "300")
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")  # vLLM's own: passed on
    env = Settings().gpu_engine_config().environment()
    assert "HF_TOKEN" not in env and "VLLM_WRAPPER_API_KEY" not in env
    assert "VLLM_SCALEDOWN_WINDOW" not in env
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert not {k for k, v in env.items() if v in ("hf_secret", "wrapper-secret")}
    assert os.environ["HF_TOKEN"] == "hf_secret"  # the parent keeps it for the download


@pytest.mark.parametrize("model", ["meta-llama/Llama-3.1-8B-Instruct"])
def test_gpu_engine_pins_the_revision_it_downloads(model) -> None:
    config = Settings(model=model, model_revision="abc123").gpu_engine_config()
    assert config.revision == "abc123"
    assert config.command(8001)[config.command(8001).index("--revision") + 1] == "abc123"


async def test_a_dead_engine_stops_the_container_taking_inputs_once(tmp_path) -> None:
    stops: list[str] = []

    async def stop_fetching() -> None:
        stops.append("stop")

    srv, engine = server(tmp_path)
    srv.on_broken = stop_fetching

    async def dead(body: dict[str, Any]) -> dict[str, Any]:
        raise EngineUnavailable("the engine failed: EngineDeadError", retry_after=5)

    engine.chat = dead  # type: ignore[method-assign]
    engine.healthy = True  # type: ignore[attr-defined]
    with pytest.raises(EngineUnavailable):
        await srv.chat({})
    assert stops == [] and not srv.broken  # a lost connection, the engine is fine
    engine.healthy = False  # type: ignore[attr-defined]
    for _ in range(2):
        with pytest.raises(EngineUnavailable):
            await srv.chat({})
    assert stops == ["stop"] and srv.broken
