"""LoRA adapters in the engine layer, offline: vLLM's command line and environment, the
engine's load/unload routes over a stand-in HTTP client, and ``LocalTransport`` remembering
adapters across scale-to-zero over an engine stand-in (the real engine is tested against
vLLM in tests/integration_tests/test_lora_engine.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from deploy.core.errors import EngineRequestError, EngineUnavailable
from deploy.engine import local_model
from deploy.engine.process import EngineConfig, VLLMEngine, gpu_engine_config
from deploy.settings.settings import Settings
from deploy.transports.local import LocalTransport
from tests.unit_tests.transports.test_local_transport import BODY, ControlledEngine, _until

LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"


def adapter_dir(root: Path, name: str, rank: int = 8) -> str:
    """A folder that looks like a peft adapter (what LocalTransport checks before vLLM)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    return str(folder)


# -- EngineConfig: the command line and the environment ------------------------------------


def test_without_lora_the_command_and_environment_are_as_before() -> None:
    plain = EngineConfig(model="m", served_model_name="m")
    assert not plain.enable_lora and plain.lora_modules == {} and plain.max_lora_rank == 16
    cmd = plain.command(8000)
    assert not {"--enable-lora", "--max-lora-rank", "--lora-modules"} & set(cmd)
    assert LORA_ENV not in plain.environment()
    # Explicitly off, with a rank given: still nothing.
    assert EngineConfig(model="m", served_model_name="m", max_lora_rank=64).command(8000) == cmd


def test_lora_modules_turn_lora_on_and_are_served_from_the_start() -> None:
    config = EngineConfig(
        model="m",
        served_model_name="base",
        lora_modules={"tuned": "/adapters/tuned", "sql": "/adapters/sql"},
        max_lora_rank=8,
        extra_args=("--seed", "1"),
    )
    assert config.enable_lora
    cmd = config.command(8000)
    at = cmd.index("--enable-lora")
    assert cmd[at : at + 6] == [
        "--enable-lora", "--max-lora-rank", "8",
        "--lora-modules", "tuned=/adapters/tuned", "sql=/adapters/sql",
    ]  # fmt: skip
    assert cmd[-2:] == ["--seed", "1"]  # extra arguments stay last
    assert config.environment()[LORA_ENV] == "True"


def test_enable_lora_alone_starts_with_no_adapter_but_allows_runtime_loading() -> None:
    config = EngineConfig(model="m", served_model_name="m", enable_lora=True)
    cmd = config.command(8000)
    assert "--enable-lora" in cmd and "--lora-modules" not in cmd
    assert cmd[cmd.index("--max-lora-rank") + 1] == "16"
    assert config.environment()[LORA_ENV] == "True"


def test_extra_env_may_still_override_the_runtime_switch() -> None:
    config = EngineConfig(
        model="m", served_model_name="m", enable_lora=True, extra_env={LORA_ENV: "False"}
    )
    assert config.environment()[LORA_ENV] == "False"


def test_gpu_engine_config_serves_the_models_adapters() -> None:
    plain = gpu_engine_config(Settings())
    assert not plain.enable_lora and plain.lora_modules == {}
    assert "--enable-lora" not in plain.command(8001)
    settings = Settings(adapters={"sql": "/models/sql", "chat": "org/chat-lora"}, max_lora_rank=32)
    config = gpu_engine_config(settings)
    assert config.enable_lora and config.max_lora_rank == 32
    assert config.lora_modules == {"sql": "/models/sql", "chat": "org/chat-lora"}
    cmd = config.command(8001)
    assert cmd[cmd.index("--max-lora-rank") + 1] == "32"
    assert "sql=/models/sql" in cmd and "chat=org/chat-lora" in cmd


def test_local_engine_config_keeps_its_defaults_and_takes_lora(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(local_model, "prepare_local_model", lambda cache_dir=None: tmp_path)
    default = local_model.local_engine_config(None, "/tmp/engine.log")
    assert default.served_model_name == local_model.LOCAL_MODEL_NAME
    assert default.max_model_len == 2048 and default.log_file == "/tmp/engine.log"
    assert not default.enable_lora and default.model == str(tmp_path)
    tuned = local_model.local_engine_config(
        served_name="smol-lora", max_model_len=1024, lora_modules={"t": "/a/t"}
    )
    assert tuned.served_model_name == "smol-lora" and tuned.max_model_len == 1024
    assert tuned.enable_lora and tuned.max_lora_rank == 8 and tuned.lora_modules == {"t": "/a/t"}
    bare = local_model.local_engine_config(enable_lora=True, max_lora_rank=16)
    assert bare.enable_lora and bare.lora_modules == {} and bare.max_lora_rank == 16


# -- VLLMEngine: the two routes ---------------------------------------------------------------


class FakeResponse:
    def __init__(self, status: int, text: str) -> None:
        self.status, self._text = status, text

    async def text(self) -> str:
        return self._text

    async def read(self) -> bytes:
        return self._text.encode()

    async def __aenter__(self) -> FakeResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class FakeSession:
    """Answers each POST with the next scripted (status, text), or raises it."""

    def __init__(self, *answers: tuple[int, str] | Exception) -> None:
        self.answers = list(answers)
        self.posts: list[tuple[str, Any]] = []

    def post(self, route: str, json: Any = None) -> FakeResponse:
        self.posts.append((route, json))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return FakeResponse(*answer)

    def get(self, route: str, **kwargs: Any) -> FakeResponse:
        return FakeResponse(200, "")  # /health


class LiveProcess:
    pid, returncode = 4242, None

    def poll(self) -> None:
        return None


def engine_with(session: FakeSession) -> VLLMEngine:
    engine = VLLMEngine(EngineConfig(model="m", served_model_name="m", enable_lora=True))
    engine._process = LiveProcess()  # type: ignore[assignment]
    engine._client = lambda: session  # type: ignore[method-assign]
    return engine


def vllm_error(message: str, code: int) -> str:
    return json.dumps({"error": {"message": message, "type": "X", "param": None, "code": code}})


async def test_engine_routes_post_what_vllm_expects() -> None:
    session = FakeSession((200, "Success: added"), (200, "Success"), (200, "Success: removed"))
    engine = engine_with(session)
    await engine.load_adapter("tuned", "/a/tuned")
    await engine.load_adapter("tuned", "/a/tuned-v2", replace=True)
    await engine.unload_adapter("tuned")
    assert session.posts == [
        ("/v1/load_lora_adapter", {"lora_name": "tuned", "lora_path": "/a/tuned"}),
        (
            "/v1/load_lora_adapter",
            {"lora_name": "tuned", "lora_path": "/a/tuned-v2", "load_inplace": True},
        ),
        ("/v1/unload_lora_adapter", {"lora_name": "tuned"}),
    ]


async def test_engine_route_errors_are_mapped_like_every_call() -> None:
    missing = "The lora adapter 'nope' cannot be found."
    session = FakeSession(
        (404, vllm_error(missing, 404)),
        (400, vllm_error("The lora adapter 'tuned' has already been loaded.", 400)),
        (500, vllm_error("rank 64 is greater than max_lora_rank 16", 500)),
        aiohttp.ClientConnectionError("refused"),
    )
    engine = engine_with(session)
    with pytest.raises(EngineRequestError) as unknown:
        await engine.unload_adapter("nope")
    assert unknown.value.status_code == 404 and unknown.value.message == missing
    with pytest.raises(EngineRequestError, match="already been loaded") as twice:
        await engine.load_adapter("tuned", "/a/tuned")
    assert twice.value.status_code == 400
    # vLLM's 500 while it stays healthy: this adapter, not the engine (a 400 with its message)
    with pytest.raises(EngineRequestError, match="greater than max_lora_rank") as bad:
        await engine.load_adapter("big", "/a/big")
    assert bad.value.status_code == 400
    with pytest.raises(EngineUnavailable, match="lost the engine"):
        await engine.load_adapter("x", "/a/x")


async def test_engine_routes_need_a_running_engine() -> None:
    engine = VLLMEngine(EngineConfig(model="m", served_model_name="m", enable_lora=True))
    with pytest.raises(EngineUnavailable, match="not running"):
        await engine.load_adapter("tuned", "/a/tuned")


# -- LocalTransport: adapters across scale-to-zero ------------------------------------------


class LoraEngine(ControlledEngine):
    """The engine stand-in with vLLM's adapter routes: at start it serves its config's
    ``lora_modules`` (``--lora-modules``); the routes change what it serves."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__()
        self.config = config
        self.served: dict[str, str] = {}
        self.started_with: list[dict[str, str]] = []
        self.calls: list[tuple[str, ...]] = []

    async def start(self) -> None:
        modules = dict(self.config.lora_modules)  # read at launch, like the real command line
        await super().start()
        self.served = dict(modules)
        self.started_with.append(modules)

    def stop(self, grace: float = 15.0) -> None:
        super().stop(grace)
        self.served = {}

    async def load_adapter(self, name: str, path: str, *, replace: bool = False) -> None:
        self.calls.append(("load", name, path) + (("replace",) if replace else ()))
        if not self.running:
            raise EngineUnavailable("the engine is not running", retry_after=5)
        if name in self.served and not replace:
            raise EngineRequestError(f"The lora adapter '{name}' has already been loaded.")
        self.served[name] = path

    async def unload_adapter(self, name: str) -> None:
        self.calls.append(("unload", name))
        if name not in self.served:
            raise EngineRequestError(f"The lora adapter '{name}' cannot be found.", status_code=404)
        del self.served[name]

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        if model not in (None, self.config.served_model_name, *self.served):
            raise EngineRequestError(f"The model `{model}` does not exist.", status_code=404)
        return await super().chat(body)


def lora_transport(**config: Any) -> tuple[LocalTransport, LoraEngine]:
    scaledown = config.pop("scaledown_window", None)
    t = LocalTransport(
        EngineConfig(model="m", served_model_name="base", **config), scaledown_window=scaledown
    )
    engine = LoraEngine(t.engine.config)
    t.engine = engine  # type: ignore[assignment]
    return t, engine


async def test_loading_while_cold_starts_nothing_and_the_next_start_serves_it(tmp_path) -> None:
    t, engine = lora_transport(enable_lora=True, max_lora_rank=8)
    path = adapter_dir(tmp_path, "tuned")
    await t.load_adapter("tuned", path)
    assert engine.starts == 0 and t.state == "cold" and engine.calls == []
    assert t.adapters() == {"tuned": path}
    assert engine.config.lora_modules == {"tuned": path} and engine.config.enable_lora
    assert "tuned=" + path in engine.config.command(8000)
    engine.may_start.set()
    assert (await t.chat({**BODY, "model": "tuned"})).body["choices"]
    assert engine.started_with == [{"tuned": path}] and engine.calls == []
    await t.aclose()


async def test_loading_while_warm_loads_at_once_and_survives_a_scale_down(tmp_path) -> None:
    t, engine = lora_transport(enable_lora=True, scaledown_window=0.05)
    engine.may_start.set()
    await t.ensure_warm()
    path = adapter_dir(tmp_path, "tuned")
    await t.load_adapter("tuned", path)
    assert engine.calls == [("load", "tuned", path)] and engine.served == {"tuned": path}
    assert (await t.chat({**BODY, "model": "tuned"})).body["choices"]
    await _until(lambda: t.state == "cold")  # idle: scaled to zero
    assert engine.served == {}
    # The engine restarted after the scale-down gets the remembered adapter from its start.
    assert (await t.chat({**BODY, "model": "tuned"})).body["choices"]
    assert engine.starts == 2 and engine.started_with == [{}, {"tuned": path}]
    assert len(engine.calls) == 1  # not loaded twice
    await t.aclose()


async def test_unloading_removes_it_now_and_from_later_starts(tmp_path) -> None:
    a, b = adapter_dir(tmp_path, "a"), adapter_dir(tmp_path, "b")
    t, engine = lora_transport(lora_modules={"a": a, "b": b})
    engine.may_start.set()
    await t.ensure_warm()
    assert engine.served == {"a": a, "b": b}
    await t.unload_adapter("a")
    assert engine.calls == [("unload", "a")] and engine.served == {"b": b}
    assert t.adapters() == {"b": b}
    with pytest.raises(EngineRequestError) as gone:
        await t.chat({**BODY, "model": "a"})
    assert gone.value.status_code == 404
    await t.scale_down()
    await t.unload_adapter("b")  # cold: nothing started, nothing called
    assert engine.starts == 1 and len(engine.calls) == 1 and t.adapters() == {}
    assert engine.config.enable_lora  # still LoRA-enabled with none left: loads still work
    await t.ensure_warm()
    assert engine.started_with[-1] == {}
    assert "--enable-lora" in engine.config.command(8000)
    assert "--lora-modules" not in engine.config.command(8000)
    await t.aclose()


async def test_unloading_an_unknown_adapter_is_a_404() -> None:
    t, engine = lora_transport(enable_lora=True)
    with pytest.raises(EngineRequestError, match="no LoRA adapter named 'nope'") as cold:
        await t.unload_adapter("nope")
    assert cold.value.status_code == 404
    engine.may_start.set()
    await t.ensure_warm()
    with pytest.raises(EngineRequestError) as warm:
        await t.unload_adapter("nope")
    assert warm.value.status_code == 404 and engine.calls == []
    await t.aclose()


async def test_a_model_without_lora_refuses_adapters_with_a_400(tmp_path) -> None:
    t, engine = lora_transport()
    for call in (t.load_adapter("tuned", adapter_dir(tmp_path, "t")), t.unload_adapter("tuned")):
        with pytest.raises(EngineRequestError, match="not started with LoRA") as refused:
            await call
        assert refused.value.status_code == 400
        assert "adapters or set enable_lora" in refused.value.message
    assert t.adapters() == {} and engine.starts == 0
    await t.aclose()


async def test_a_bad_adapter_is_refused_before_it_can_break_a_cold_start(tmp_path) -> None:
    t, engine = lora_transport(enable_lora=True, max_lora_rank=8)
    with pytest.raises(EngineRequestError, match="no LoRA adapter at") as missing:
        await t.load_adapter("x", str(tmp_path / "missing"))
    assert missing.value.status_code == 404
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineRequestError, match=r"adapter_config\.json"):
        await t.load_adapter("x", str(tmp_path / "empty"))
    with pytest.raises(EngineRequestError, match="rank 64, above this model's max_lora_rank 8"):
        await t.load_adapter("x", adapter_dir(tmp_path, "big", rank=64))
    with pytest.raises(EngineRequestError, match="base model's own"):
        await t.load_adapter("base", adapter_dir(tmp_path, "ok"))
    with pytest.raises(EngineRequestError, match="not a valid adapter name"):
        await t.load_adapter("a=b", adapter_dir(tmp_path, "ok"))
    assert t.adapters() == {} and engine.starts == 0
    await t.load_adapter("hub", "org/some-lora")  # a Hub repo id: vLLM's to fetch
    assert t.adapters() == {"hub": "org/some-lora"}
    await t.aclose()


async def test_loading_again_is_idempotent_and_a_new_path_replaces_the_weights(tmp_path) -> None:
    v1, v2 = adapter_dir(tmp_path, "v1"), adapter_dir(tmp_path, "v2")
    t, engine = lora_transport(lora_modules={"tuned": v1})
    engine.may_start.set()
    await t.ensure_warm()
    await t.load_adapter("tuned", v1)
    assert engine.calls == []
    await t.load_adapter("tuned", v2)
    assert engine.calls == [("load", "tuned", v2, "replace")] and engine.served == {"tuned": v2}
    assert t.adapters() == {"tuned": v2}
    await t.aclose()


async def test_vllm_refusing_a_load_remembers_nothing(tmp_path) -> None:
    t, engine = lora_transport(enable_lora=True)
    engine.may_start.set()
    await t.ensure_warm()
    path = adapter_dir(tmp_path, "tuned")
    engine.served["tuned"] = path  # vLLM already has a "tuned" this transport never loaded
    with pytest.raises(EngineRequestError, match="already been loaded"):
        await t.load_adapter("tuned", path)
    assert t.adapters() == {}
    await t.aclose()


async def test_a_load_during_a_start_waits_for_it_then_uses_the_route(tmp_path) -> None:
    t, engine = lora_transport(enable_lora=True)
    warming = asyncio.ensure_future(t.ensure_warm())
    await _until(lambda: t.state == "starting")  # launched without the adapter
    path = adapter_dir(tmp_path, "tuned")
    loading = asyncio.ensure_future(t.load_adapter("tuned", path))
    await asyncio.sleep(0.02)
    assert not loading.done()
    engine.may_start.set()
    await asyncio.gather(warming, loading)
    assert engine.started_with == [{}] and engine.calls == [("load", "tuned", path)]
    assert engine.served == {"tuned": path} and t.adapters() == {"tuned": path}
    await t.aclose()


def test_a_model_can_start_with_lora_on_and_no_adapter_to_take_some_at_run_time() -> None:
    import json

    from deploy.settings.settings import Settings

    plain, ready = Settings(
        models=json.dumps([{"name": "plain"}, {"name": "ready", "enable_lora": True}])
    ).served_models()
    assert not plain.lora and "--enable-lora" not in gpu_engine_config(plain).command(8001)
    config = gpu_engine_config(ready)
    assert ready.lora and config.enable_lora and config.lora_modules == {}
    assert "--enable-lora" in config.command(8001)
    assert config.environment()["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
