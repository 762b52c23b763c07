"""The GPU container's life, without a GPU: ``InferenceServer`` over an engine stand-in that
records what it is asked (the engine itself is tested against real vLLM elsewhere)."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest

from deploy.core.errors import EngineRequestError, EngineStartError, EngineUnavailable
from deploy.engine.process import EngineConfig, gpu_engine_config
from deploy.engine.server import InferenceServer, fetch_adapter, fetch_weights
from deploy.settings.settings import Settings


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

    def is_running(self) -> bool:
        return "start" in self.calls

    async def load_adapter(self, name: str, path: str, *, replace: bool = False) -> None:
        self.calls.append(f"load:{name}={path}" + (":replace" if replace else ""))

    async def unload_adapter(self, name: str) -> None:
        self.calls.append(f"unload:{name}")


def server(tmp_path, **config: Any) -> tuple[InferenceServer, RecordingEngine]:
    srv = InferenceServer(EngineConfig(model=str(tmp_path), served_model_name="m", **config))
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
    env = gpu_engine_config(Settings()).environment()
    assert "HF_TOKEN" not in env and "VLLM_WRAPPER_API_KEY" not in env
    assert "VLLM_SCALEDOWN_WINDOW" not in env
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert not {k for k, v in env.items() if v in ("hf_secret", "wrapper-secret")}
    assert os.environ["HF_TOKEN"] == "hf_secret"  # the parent keeps it for the download


@pytest.mark.parametrize("model", ["meta-llama/Llama-3.1-8B-Instruct"])
def test_gpu_engine_pins_the_revision_it_downloads(model) -> None:
    config = gpu_engine_config(Settings(model=model, model_revision="abc123"))
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


# -- LoRA adapters --------------------------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch, tmp_path) -> list[str]:
    """The Hub's snapshot_download: each repo id lands in a folder of the cache."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    downloads: list[str] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        if repo_id.startswith("missing/"):
            raise LocalEntryNotFoundError(f"cannot reach the Hub for {repo_id}")
        downloads.append(repo_id)
        return str(tmp_path / "hub" / repo_id.replace("/", "--"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return downloads


def test_adapter_sources_hub_ids_are_downloaded_paths_used_as_they_are(hub, tmp_path) -> None:
    assert fetch_adapter("/models/sql-lora") == "/models/sql-lora"  # a mounted Volume
    assert fetch_adapter(str(tmp_path)) == str(tmp_path)  # a local folder
    assert fetch_adapter("acme/sql-lora").endswith("hub/acme--sql-lora")
    assert hub == ["acme/sql-lora"]
    with pytest.raises(EngineRequestError, match="no LoRA adapter at 'missing/lora'") as err:
        fetch_adapter("missing/lora")
    assert err.value.status_code == 404


async def test_declared_adapters_are_fetched_before_vllm_starts(hub, tmp_path) -> None:
    declared = {"sql": "acme/sql-lora", "chat": "/models/chat"}
    srv, engine = server(tmp_path, lora_modules=declared)
    await srv.start()
    # vLLM gets local folders only: it never calls the Hub, and never sees HF_TOKEN.
    assert srv.engine.config.lora_modules == {  # type: ignore[attr-defined]
        "sql": str(tmp_path / "hub" / "acme--sql-lora"),
        "chat": "/models/chat",
    }
    assert srv.config.lora_modules == declared  # what the class was built with, unchanged
    assert engine.calls == ["start"] and srv.status()["adapters"] == ["chat", "sql"]


async def test_an_adapter_that_cannot_be_had_fails_the_start(hub, tmp_path) -> None:
    srv, engine = server(tmp_path, lora_modules={"x": "missing/lora"})
    with pytest.raises(EngineStartError, match="missing/lora"):
        await srv.start()
    assert engine.calls == []  # vLLM never started


async def test_adapters_load_and_unload_at_run_time_on_this_container(hub, tmp_path) -> None:
    srv, engine = server(tmp_path, lora_modules={"chat": "/models/chat"})
    await srv.start()
    loaded = await srv.load_adapter("sql", "acme/sql-lora")
    assert loaded == {"adapter": "sql", "source": "acme/sql-lora", "container": srv.container_id}
    local = str(tmp_path / "hub" / "acme--sql-lora")
    await srv.load_adapter("sql", "acme/sql-lora")  # the same again: nothing to do
    await srv.load_adapter("sql", "/models/sql-v2")  # another source: its weights replaced
    await srv.unload_adapter("chat")  # a declared one too
    assert engine.calls == ["start", f"load:sql={local}", "load:sql=/models/sql-v2:replace",
                            "unload:chat"]  # fmt: skip
    assert srv.status()["adapters"] == ["sql"]
    with pytest.raises(EngineRequestError, match="no LoRA adapter named 'chat'") as err:
        await srv.unload_adapter("chat")
    assert err.value.status_code == 404


async def test_a_model_started_without_lora_refuses_adapters(tmp_path) -> None:
    srv, engine = server(tmp_path)
    await srv.start()
    with pytest.raises(EngineRequestError, match="without LoRA"):
        await srv.load_adapter("sql", "/models/sql")
    assert engine.calls == ["start"]
