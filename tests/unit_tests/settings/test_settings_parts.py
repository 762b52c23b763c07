"""``Settings`` made of one part per concern (deploy/settings/): every field of the one flat
module it replaced is still there, with its default, constraints and ``VLLM_<FIELD>`` name;
each part module holds its concern only; loading (environment, baked JSON) and
``served_models()`` work as before; and the settings import nothing but themselves and
``deploy.core``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from deploy.settings import Settings as ExportedSettings
from deploy.settings import gpu
from deploy.settings.constants import BAKED_SETTINGS_ENV
from deploy.settings.gateway import GatewayPart
from deploy.settings.http import HttpPart
from deploy.settings.model import ModelPart
from deploy.settings.scaling import ScalingPart
from deploy.settings.settings import PARTS, SECRET_ENV, Settings

SETTINGS_DIR = Path(__file__).resolve().parents[3] / "deploy" / "settings"

# The fields of ``Settings`` before it was split into parts (deploy/settings/settings.py as one
# module), as name: (type, default, constraints). The order is not part of the contract.
SNAPSHOT = {
    "model": ("str", "meta-llama/Llama-3.1-8B-Instruct", ""),
    "model_revision": ("str | None", None, ""),
    "served_name": ("str | None", None, ""),
    "adapters": ("dict[str, str]", {}, ""),
    "enable_lora": ("bool", False, ""),
    "max_lora_rank": ("int", 16, "Ge(ge=1) Le(le=512)"),
    "models": ("str | None", None, ""),
    "gpu": ("str | None", None, ""),
    "tensor_parallel_size": ("int | None", None, "Ge(ge=1) Le(le=8)"),
    "max_model_len": ("int | None", None, "Ge(ge=256)"),
    "max_num_seqs": ("int", 64, "Ge(ge=1) Le(le=1024)"),
    "enforce_eager": ("bool", True, ""),
    "tool_call_parser": ("str | None", None, ""),
    "chat_template": ("str | None", None, ""),
    "reasoning_parser": ("str | None", None, ""),
    "runner": ("Optional[Literal['generate', 'pooling']]", None, ""),
    "mode": ("Literal['autoscale', 'integrated']", "autoscale", ""),
    "scaledown_window": ("int", 120, "Ge(ge=2) Le(le=3600)"),
    "max_containers": ("int", 1, "Ge(ge=1) Le(le=100)"),
    "target_inputs": ("int | None", None, "Ge(ge=1)"),
    "startup_timeout": ("int", 1200, "Ge(ge=60)"),
    "warm_schedule": ("str | None", None, ""),
    "cold_fallback_url": ("str | None", None, ""),
    "cold_fallback_api_key": ("SecretStr | None", None, ""),
    "cold_fallback_model": ("str | None", None, ""),
    "cold_fallback_policy": ("Literal['always', 'header', 'after']", "always", ""),
    "cold_fallback_after": ("float", 10.0, "Ge(ge=0) Le(le=600)"),
    "gpu_snapshot": ("bool", False, ""),
    "drain_grace": ("float", 20.0, "Ge(ge=0) Le(le=600)"),
    "public_docs": ("bool", False, ""),
    "wrapper_api_key": ("SecretStr | None", None, ""),
    "api_keys": ("SecretStr | None", None, ""),
    "api_keys_file": ("Path | None", None, ""),
    "default_rpm": ("int | None", None, "Ge(ge=0)"),
    "default_tpm": ("int | None", None, "Ge(ge=0)"),
    "tpm_completion_reserve": ("int | None", None, "Ge(ge=0)"),
    "default_max_streams": ("int | None", None, "Ge(ge=0)"),
    "default_monthly_budget_usd": ("float | None", None, "Ge(ge=0)"),
    "state_url": ("str | None", None, ""),
    "state_sync_interval": ("float", 2.0, "Gt(gt=0) Le(le=300)"),
    "require_key": ("bool", False, ""),
    "state_spill_dir": ("Path", Path("~/.local/state/vllm-autoscale/spill"), ""),
    "state_key_grace": ("float", 60.0, "Gt(gt=0)"),
    "request_cost_estimate_usd": ("float | None", None, "Ge(ge=0)"),
    "prefix_cache_isolation": ("Literal['shared', 'per_key']", "shared", ""),
    "gpu_cost_allocation": ("Literal['proportional', 'overhead']", "proportional", ""),
    "cache_max_entries": ("int", 1024, "Ge(ge=0)"),
    "cache_max_bytes": ("int", 67108864, "Ge(ge=1024)"),
    "cache_ttl": ("float", 3600.0, "Gt(gt=0)"),
    "cache_shared": ("bool", False, ""),
    "max_queue": ("int", 256, "Ge(ge=1)"),
    "queue_timeout": ("float", 600, "Gt(gt=0)"),
    "progress_interval": ("float", 2.0, "Gt(gt=0)"),
    "heartbeat_interval": ("float", 10.0, "Gt(gt=0)"),
    "max_body_bytes": ("int", 4000000, "Ge(ge=1024)"),
    "max_messages": ("int", 1024, "Ge(ge=1)"),
    "max_tokens_limit": ("int", 8192, "Ge(ge=1)"),
    "default_max_tokens": ("int | None", None, "Ge(ge=1)"),
    "max_batch": ("int", 256, "Ge(ge=1)"),
    "gpu_price_per_hour": ("float", 2.5, "Ge(ge=0)"),
    "header_timeout": ("float", 10.0, "Gt(gt=0)"),
    "keepalive_timeout": ("float", 5.0, "Gt(gt=0)"),
    "body_timeout": ("float", 30.0, "Gt(gt=0)"),
    "max_header_bytes": ("int", 65536, "Ge(ge=1024)"),
    "max_connections": ("int | None", None, "Ge(ge=1)"),
}
UNDOCUMENTED = {"max_lora_rank", "cache_max_bytes", "max_body_bytes", "max_messages"}
"""The fields that had no docstring in the one module either."""

# Each concern's fields: the part that holds them, and its module.
CONCERNS = {
    ModelPart: ("model", {
        "model", "model_revision", "served_name", "adapters", "enable_lora", "max_lora_rank",
        "models", "gpu", "tensor_parallel_size", "max_model_len", "max_num_seqs",
        "enforce_eager", "tool_call_parser", "chat_template", "reasoning_parser",
        "gpu_price_per_hour", "runner",
    }),
    ScalingPart: ("scaling", {
        "mode", "scaledown_window", "max_containers", "target_inputs", "startup_timeout",
        "warm_schedule", "cold_fallback_url", "cold_fallback_api_key", "cold_fallback_model",
        "cold_fallback_policy", "cold_fallback_after", "gpu_snapshot", "drain_grace",
    }),
    GatewayPart: ("gateway", {
        "public_docs", "wrapper_api_key", "api_keys", "api_keys_file", "default_rpm",
        "default_tpm", "tpm_completion_reserve", "default_max_streams",
        "default_monthly_budget_usd", "state_url",
        "state_sync_interval", "require_key", "state_spill_dir", "state_key_grace",
        "request_cost_estimate_usd", "prefix_cache_isolation", "gpu_cost_allocation",
        "cache_max_entries",
        "cache_max_bytes", "cache_ttl", "cache_shared",
    }),
    HttpPart: ("http", {
        "max_queue", "queue_timeout", "heartbeat_interval", "progress_interval",
        "max_body_bytes", "max_messages",
        "max_tokens_limit", "default_max_tokens", "max_batch", "header_timeout",
        "keepalive_timeout", "body_timeout", "max_header_bytes", "max_connections",
    }),
}  # fmt: skip

# One valid ``VLLM_<FIELD>`` value per field, and what the field then reads.
ENV_SAMPLES: dict[str, tuple[str, object]] = {
    "model": ("Qwen/Qwen3-8B", "Qwen/Qwen3-8B"),
    "model_revision": ("abc123", "abc123"),
    "served_name": ("served", "served"),
    "adapters": ('{"sql": "org/sql-lora"}', {"sql": "org/sql-lora"}),
    "enable_lora": ("true", True),
    "max_lora_rank": ("32", 32),
    "models": ('[{"name": "m"}]', '[{"name": "m"}]'),
    "gpu": ("H100", "H100"),
    "tensor_parallel_size": ("1", 1),
    "max_model_len": ("4096", 4096),
    "max_num_seqs": ("8", 8),
    "enforce_eager": ("false", False),
    "tool_call_parser": ("hermes", "hermes"),
    "chat_template": ("chatml_tools.jinja", "chatml_tools.jinja"),
    "reasoning_parser": ("qwen3", "qwen3"),
    "runner": ("pooling", "pooling"),
    "gpu_price_per_hour": ("3.5", 3.5),
    "mode": ("integrated", "integrated"),
    "scaledown_window": ("300", 300),
    "max_containers": ("3", 3),
    "target_inputs": ("4", 4),
    "startup_timeout": ("600", 600),
    "warm_schedule": ("0 9 * * mon-fri 9h Europe/Paris", "0 9 * * mon-fri 9h Europe/Paris"),
    "cold_fallback_url": ("http://fallback.test/v1", "http://fallback.test/v1"),
    "cold_fallback_api_key": ("sk-fallback", "sk-fallback"),
    "cold_fallback_model": ("small", "small"),
    "cold_fallback_policy": ("after", "after"),
    "cold_fallback_after": ("5", 5.0),
    "gpu_snapshot": ("true", True),
    "drain_grace": ("3", 3.0),
    "public_docs": ("true", True),
    "wrapper_api_key": ("sk-wrapper", "sk-wrapper"),
    "api_keys": ("[]", "[]"),
    "api_keys_file": ("/tmp/keys.toml", Path("/tmp/keys.toml")),
    "default_rpm": ("5", 5),
    "default_tpm": ("6", 6),
    "tpm_completion_reserve": ("300", 300),
    "default_max_streams": ("7", 7),
    "default_monthly_budget_usd": ("8.5", 8.5),
    "state_url": ("memory://", "memory://"),
    "state_sync_interval": ("4", 4.0),
    "require_key": ("true", True),
    "state_spill_dir": ("/tmp/spill", Path("/tmp/spill")),
    "state_key_grace": ("9", 9.0),
    "request_cost_estimate_usd": ("0.01", 0.01),
    "prefix_cache_isolation": ("per_key", "per_key"),
    "gpu_cost_allocation": ("overhead", "overhead"),
    "cache_max_entries": ("0", 0),
    "cache_max_bytes": ("2048", 2048),
    "cache_ttl": ("5", 5.0),
    "cache_shared": ("true", True),
    "max_queue": ("3", 3),
    "queue_timeout": ("4", 4.0),
    "heartbeat_interval": ("1", 1.0),
    "progress_interval": ("0.5", 0.5),
    "max_body_bytes": ("2048", 2048),
    "max_messages": ("2", 2),
    "max_tokens_limit": ("100", 100),
    "default_max_tokens": ("50", 50),
    "max_batch": ("2", 2),
    "header_timeout": ("1", 1.0),
    "keepalive_timeout": ("2", 2.0),
    "body_timeout": ("3", 3.0),
    "max_header_bytes": ("2048", 2048),
    "max_connections": ("10", 10),
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``VLLM_*`` variable or baked settings of the machine running the tests."""
    import os

    for name in list(os.environ):
        if name.startswith("VLLM_") or name == BAKED_SETTINGS_ENV:
            monkeypatch.delenv(name)


def _type(annotation: object) -> str:
    text = str(annotation)
    if text.startswith("<class "):
        return annotation.__qualname__  # type: ignore[attr-defined]
    return text.replace("typing.", "").replace("pydantic.types.", "").replace("pathlib.", "")


def _value(value: object) -> object:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


# -- every field as before ------------------------------------------------------------------------


def test_every_field_keeps_its_type_default_and_constraints() -> None:
    now = {
        name: (_type(f.annotation), f.get_default(call_default_factory=True),
               " ".join(repr(m) for m in f.metadata))
        for name, f in Settings.model_fields.items()
    }  # fmt: skip
    assert now == SNAPSHOT
    plain = Settings()
    for name, (_, default, _) in SNAPSHOT.items():
        assert getattr(plain, name) == default, name


def test_every_field_keeps_its_env_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(ENV_SAMPLES) == set(SNAPSHOT)
    # And the settings file's name (deploy/settings/config_file.py): the service's, not vLLM's.
    assert Settings.env_names() == {f"VLLM_{name.upper()}" for name in SNAPSHOT} | {"VLLM_CONFIG"}
    for name, (raw, expected) in ENV_SAMPLES.items():
        with monkeypatch.context() as env:
            env.setenv(f"VLLM_{name.upper()}", raw)
            assert _value(getattr(Settings(), name)) == expected, name
            assert _value(getattr(Settings.load(), name)) == expected, name


def test_secrets_stay_secret_strings() -> None:
    secrets = {n for n, f in Settings.model_fields.items() if "SecretStr" in _type(f.annotation)}
    assert secrets == {"wrapper_api_key", "api_keys", "cold_fallback_api_key"}
    assert {f"VLLM_{n.upper()}" for n in secrets} <= set(SECRET_ENV)
    shown = Settings(wrapper_api_key="sk-hidden-123")
    assert isinstance(shown.wrapper_api_key, SecretStr)
    assert "sk-hidden-123" not in repr(shown) and "sk-hidden-123" not in str(shown)


def test_the_package_exports_the_one_settings() -> None:
    assert ExportedSettings is Settings


# -- the parts ----------------------------------------------------------------------------------


def test_each_field_belongs_to_one_part_of_its_concern() -> None:
    assert tuple(CONCERNS) == PARTS
    seen: list[str] = []
    for part, (module, fields) in CONCERNS.items():
        assert part.__module__ == f"deploy.settings.{module}"
        assert issubclass(Settings, part) and issubclass(part, BaseModel)
        assert set(part.model_fields) == fields, part.__name__
        seen += list(part.model_fields)
    assert len(seen) == len(set(seen))  # no field in two parts
    assert seen == list(Settings.model_fields)  # all of them, in the parts' order
    for name, field in Settings.model_fields.items():
        owner = next(p for p in PARTS if name in p.model_fields)
        assert field.annotation == owner.model_fields[name].annotation, name


def _tree(module: str) -> ast.Module:
    return ast.parse((SETTINGS_DIR / f"{module}.py").read_text())


def _project_imports(module: str) -> list[tuple[str, bool]]:
    """The project modules ``deploy/settings/<module>.py`` imports, each with whether the
    import is at the module's top level."""
    tree = _tree(module)
    top = {id(node) for node in tree.body}
    out: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ["deploy", "settings"][: 3 - node.level]
            target = ".".join(base + ([node.module] if node.module else []))
            out.append((target, id(node) in top))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deploy"):
            out.append((node.module or "", id(node) in top))
        elif isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names if a.name.startswith("deploy")]
    return out


MODULES = sorted(p.stem for p in SETTINGS_DIR.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", MODULES)
def test_settings_modules_import_only_settings_and_core_at_top_level(module: str) -> None:
    for target, at_top in _project_imports(module):
        assert target.startswith(("deploy.settings", "deploy.core")), (module, target)
        assert at_top, f"{module} imports {target} inside a function or block"


@pytest.mark.parametrize("module", ["model", "scaling", "gateway", "http"])
def test_a_part_module_holds_its_concern_only(module: str) -> None:
    others = {"model", "scaling", "gateway", "http", "settings"} - {module}
    imported = {t.rpartition(".")[2] for t, _ in _project_imports(module)}
    assert not imported & others, f"{module} imports {sorted(imported & others)}"
    classes = [n.name for n in _tree(module).body if isinstance(n, ast.ClassDef)]
    part = next(p for p, (m, _) in CONCERNS.items() if m == module)
    assert classes == [part.__name__]


@pytest.mark.parametrize("module", ["constants", "gpu", "presets"])
def test_shared_modules_import_no_part(module: str) -> None:
    assert not _project_imports(module), module


@pytest.mark.parametrize("module", ["model", "scaling", "gateway", "http"])
def test_each_field_keeps_its_docstring(module: str) -> None:
    part = next(n for n in _tree(module).body if isinstance(n, ast.ClassDef))
    documented = set()
    for node, after in zip(part.body, [*part.body[1:], None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            if doc and isinstance(after.value.value, str):  # type: ignore[union-attr]
                documented.add(node.target.id)
    fields = next(f for m, f in CONCERNS.values() if m == module)
    assert documented == fields - UNDOCUMENTED


def test_settings_load_only_settings_and_core_of_the_project() -> None:
    code = (
        "import sys, json, deploy.settings, deploy.settings.settings; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    ours = {m for m in loaded if m == "deploy" or m.startswith(("deploy.", "langchain_vllm"))}
    assert "deploy.settings.settings" in ours and "deploy.settings.scaling" in ours
    stray = {m for m in ours - {"deploy"} if not m.startswith(("deploy.settings", "deploy.core"))}
    assert not stray, sorted(stray)


# -- the GPU grammar ------------------------------------------------------------------------------


def test_the_gpu_grammar() -> None:
    assert gpu.is_gpu_spec("A100-80GB") and gpu.is_gpu_spec("A100-80GB:2")
    assert not gpu.is_gpu_spec("A100-80GB:9") and not gpu.is_gpu_spec("RTX4090")
    assert [gpu.gpu_count(s) for s in ("H100", "H100:8", "nonsense")] == [1, 8, 1]
    assert "TYPE or TYPE:COUNT" in gpu.gpu_spec_error("X")
    assert Settings(gpu="A100-80GB:2").gpu_count == 2
    assert Settings(model="meta-llama/Llama-3.1-70B-Instruct").tp_size == 2  # from the preset


# -- checks across parts, in their order ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gpu": "X", "chat_template": "nope.jinja"}, "VLLM_GPU='X'"),
        ({"chat_template": "nope.jinja", "target_inputs": 100}, "VLLM_CHAT_TEMPLATE"),
        ({"target_inputs": 100, "models": "[]"}, "VLLM_TARGET_INPUTS=100"),
        ({"models": "[]", "warm_schedule": "bad"}, "VLLM_MODELS must be"),
        ({"warm_schedule": "bad", "tensor_parallel_size": 3}, "VLLM_WARM_SCHEDULE"),
        ({"tensor_parallel_size": 3}, "VLLM_TENSOR_PARALLEL_SIZE=3"),
    ],
)
def test_the_first_failing_check_is_the_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**kwargs)


def test_warm_schedule_is_parsed_from_its_part() -> None:
    assert not Settings().schedule.windows
    assert len(Settings(warm_schedule="0 9 * * mon-fri 9h; 0 10 * * sat 3h").schedule.windows) == 2


def test_concurrency_target_spans_model_and_scaling() -> None:
    assert Settings(max_num_seqs=64).concurrency_target == 48
    assert Settings(max_num_seqs=64, target_inputs=10).concurrency_target == 10


# -- loading --------------------------------------------------------------------------------------


def test_baked_json_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "VLLM_MODEL": "Qwen/Qwen3-8B", "VLLM_SCALEDOWN_WINDOW": "300",
        "VLLM_ADAPTERS": '{"sql": "org/sql-lora"}', "VLLM_WARM_SCHEDULE": "0 9 * * * 9h",
        "VLLM_DEFAULT_RPM": "60", "VLLM_CACHE_SHARED": "true", "VLLM_MAX_QUEUE": "9",
        "VLLM_STATE_SPILL_DIR": "/vol/spill", "VLLM_WRAPPER_API_KEY": "sk-wrapper-123",
        "VLLM_COLD_FALLBACK_API_KEY": "sk-fallback-456", "VLLM_API_KEYS": "[]",
    }  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    deployed = Settings.load()
    baked = deployed.baked_env()
    assert set(baked) == {BAKED_SETTINGS_ENV}
    assert "sk-wrapper-123" not in baked[BAKED_SETTINGS_ENV]
    assert "sk-fallback-456" not in baked[BAKED_SETTINGS_ENV]
    assert not {"wrapper_api_key", "api_keys", "cold_fallback_api_key"} & set(
        json.loads(baked[BAKED_SETTINGS_ENV])
    )
    # In a container: the baked JSON, and the secrets from the Modal Secret.
    for name in env:
        monkeypatch.delenv(name)
    monkeypatch.setenv(BAKED_SETTINGS_ENV, baked[BAKED_SETTINGS_ENV])
    monkeypatch.setenv("VLLM_WRAPPER_API_KEY", "sk-wrapper-123")
    monkeypatch.setenv("VLLM_COLD_FALLBACK_API_KEY", "sk-fallback-456")
    monkeypatch.setenv("VLLM_API_KEYS", "[]")
    inside = Settings.load()
    assert inside == deployed
    assert inside.model_dump(mode="json") == deployed.model_dump(mode="json")
    assert inside.scaledown_window == 300 and inside.adapters == {"sql": "org/sql-lora"}
    assert inside.wrapper_api_key is not None
    assert inside.wrapper_api_key.get_secret_value() == "sk-wrapper-123"
    assert inside.baked_env() == baked


def test_baked_json_round_trip_in_a_fresh_interpreter() -> None:
    baked = Settings(scaledown_window=90, max_queue=7, require_key=True).baked_env()
    code = (
        "import json; from deploy.settings import Settings; s = Settings.load(); "
        "print(json.dumps([s.scaledown_window, s.max_queue, s.require_key]))"
    )
    env = {"PATH": "/usr/bin:/bin", **baked}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
        cwd=SETTINGS_DIR.parents[1],
    )  # fmt: skip
    assert json.loads(out.stdout) == [90, 7, True]


def test_served_models() -> None:
    models = json.dumps([
        {"name": "chat", "model": "Qwen/Qwen3-8B", "gpu": "H100:2", "scaledown_window": 600,
         "adapters": {"sql": "org/sql-lora"}},
        {"name": "meta-llama/Llama-3.1-8B-Instruct", "max_containers": 3},
    ])  # fmt: skip
    settings = Settings(models=models, max_queue=9, wrapper_api_key="sk-k")
    first, second = settings.served_models()
    assert [first.name, second.name] == ["chat", "meta-llama/Llama-3.1-8B-Instruct"]
    assert (first.model, first.gpu_spec, first.tp_size, first.scaledown_window) == (
        "Qwen/Qwen3-8B", "H100:2", 2, 600
    )  # fmt: skip
    assert first.lora and first.adapters == {"sql": "org/sql-lora"}
    assert second.max_containers == 3 and second.scaledown_window == 120
    for one in (first, second):
        assert isinstance(one, Settings) and one.models is None
        assert one.max_queue == 9  # the service-wide settings under its own
        assert one.wrapper_api_key == settings.wrapper_api_key
    assert Settings().served_models() == [Settings()]
    with pytest.raises(ValidationError, match="served twice: a"):
        Settings(models=json.dumps([{"name": "a"}, {"name": "a"}]))
    with pytest.raises(ValidationError, match=r"VLLM_MODELS: (?s:.*)VLLM_TENSOR_PARALLEL_SIZE=1"):
        Settings(models=json.dumps([{"name": "a", "gpu": "H100:2", "tensor_parallel_size": 1}]))
