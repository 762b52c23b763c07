"""The model and its GPU: which weights the GPU class serves, under what name, with which
adapters, parsers, template and context, on which GPU (Modal) at what price."""

from __future__ import annotations

import json
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, Field

from ..core.model_info import ModelInfo
from .gpu import gpu_count as count_gpus
from .gpu import gpu_spec_error, is_gpu_spec
from .presets import CHAT_TEMPLATES, MODEL_PRESETS, NO_PRESET, ModelPreset, ModelSpec

__all__ = ["ModelPart"]


class ModelPart(BaseModel):
    """The model settings of ``Settings`` (each field is the env var ``VLLM_<FIELD>``)."""

    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    """The model the GPU class serves (Hugging Face id)."""
    model_revision: str | None = None
    """Pin a revision to avoid surprises when the repo updates."""
    served_name: str | None = None
    """What requests say in ``model`` (default: ``model``)."""
    adapters: dict[str, str] = Field(default_factory=dict)
    """LoRA adapters on this model: name -> local folder, models-Volume path or Hub repo."""
    enable_lora: bool = False
    """Start vLLM with LoRA on even without adapters, so that admins can load some at run
    time (``POST /v1/adapters``); declared adapters turn it on anyway."""
    max_lora_rank: int = Field(default=16, ge=1, le=512)
    models: str | None = None
    """Several models behind one wrapper: a JSON list of ``ModelSpec`` entries (name, model,
    gpu, scaledown_window, max_containers, parsers, adapters...). The first is the default
    for requests that name none. Unset: the one model above."""
    gpu: str | None = None
    """Modal GPU spec, e.g. "A100-80GB" or "A100-80GB:2"; default from the model's preset."""
    tensor_parallel_size: int | None = Field(default=None, ge=1, le=8)
    """Defaults to the GPU count of ``gpu``; must equal it."""
    max_model_len: int | None = Field(default=None, ge=256)
    """Context length; default from the model's preset."""
    max_num_seqs: int = Field(default=64, ge=1, le=1024)
    """Sequences vLLM runs at once; also the GPU class's Modal concurrency."""
    enforce_eager: bool = True
    """Fast boots (no CUDA graph capture) at some throughput cost: users feel the cold start."""
    tool_call_parser: str | None = None
    """vLLM's ``--tool-call-parser`` (e.g. "hermes", "llama3_json"); default from the model's
    preset. "none" turns tool calling off. A model with no preset has none unless set."""
    chat_template: str | None = None
    """A chat template shipped in ``deploy/chat_templates/`` (file name), or the model's own."""
    reasoning_parser: str | None = None
    """vLLM's ``--reasoning-parser`` (e.g. "qwen3", "deepseek_r1"); default from the preset."""
    runner: Literal["generate", "pooling"] | None = None
    """vLLM's ``--runner``: "pooling" serves an embedding model on ``/v1/embeddings``
    (chat and completions refused); default from the model's preset, else "generate"."""
    gpu_price_per_hour: float = Field(default=2.50, ge=0)
    """For the cost estimate in each response's metadata (A100-80GB on Modal)."""

    @cached_property
    def preset(self) -> ModelPreset:
        return MODEL_PRESETS.get(self.model, NO_PRESET)

    @property
    def has_preset(self) -> bool:
        return self.model in MODEL_PRESETS

    @property
    def tool_parser(self) -> str | None:
        """The tool-call parser vLLM will use (None: tool calling off)."""
        if self.tool_call_parser is not None:
            return None if self.tool_call_parser.lower() == "none" else self.tool_call_parser
        return self.preset.tool_call_parser

    @property
    def chat_template_path(self) -> str | None:
        if self.chat_template is not None:
            return str(CHAT_TEMPLATES / self.chat_template)
        return self.preset.chat_template

    @property
    def engine_runner(self) -> str:
        """The runner vLLM starts with: "generate" or "pooling" (an embedding model)."""
        return self.runner or self.preset.runner

    @property
    def reasoning(self) -> str | None:
        return self.reasoning_parser or self.preset.reasoning_parser

    def parser_warning(self) -> str | None:
        """What a deployer must hear about tool calling, or None when it is settled."""
        if self.has_preset or self.tool_call_parser is not None or self.runner == "pooling":
            return None
        return (
            f"{self.model} has no preset: tool calling is OFF. Set VLLM_TOOL_CALL_PARSER "
            "(vLLM's parser for this model family, e.g. hermes, llama3_json, mistral, "
            "qwen3_coder) and, if the model's own template lacks tools, VLLM_CHAT_TEMPLATE; "
            "VLLM_REASONING_PARSER for a reasoning model."
        )

    @property
    def gpu_spec(self) -> str:
        return self.gpu or self.preset.gpu

    @property
    def gpu_count(self) -> int:
        return count_gpus(self.gpu_spec)

    @property
    def tp_size(self) -> int:
        return self.tensor_parallel_size or self.gpu_count

    @property
    def name(self) -> str:
        """The served model's name, as requests say it."""
        return self.served_name or self.model

    @property
    def lora(self) -> bool:
        """Whether vLLM runs with LoRA (adapters declared, or ``enable_lora``)."""
        return self.enable_lora or bool(self.adapters)

    def model_specs(self) -> list[ModelSpec]:
        try:
            entries = json.loads(self.models or "[]")
        except ValueError:
            raise ValueError("VLLM_MODELS is not valid JSON (a list of models)") from None
        if not isinstance(entries, list) or not entries:
            raise ValueError("VLLM_MODELS must be a non-empty JSON list of models")
        specs = [ModelSpec.model_validate(e) for e in entries]
        names = [s.name for s in specs] + [a for s in specs for a in s.adapters]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"VLLM_MODELS: name(s) served twice: {', '.join(twice)}")
        return specs

    def model_info(self) -> ModelInfo:
        """The model the GPU class serves, as ``engine.process.gpu_engine_config`` runs it: what the
        wrapper reports on ``/v1/models`` and tokenizes with, without waking the GPU."""
        return ModelInfo(
            name=self.name,
            max_model_len=self.max_model_len or self.preset.max_model_len,
            tool_parser=self.tool_parser,
            reasoning_parser=self.reasoning,
            image_inputs=self.preset.image_inputs,
            tokenizer=self.model,
            revision=self.model_revision,
            chat_template=self.chat_template_path,
            runner=self.engine_runner,
        )

    # Checks ``Settings``' validator runs (in its order, which decides the error reported).
    def _check_gpu_spec(self) -> None:
        if not is_gpu_spec(self.gpu_spec):
            raise ValueError(gpu_spec_error(self.gpu_spec))

    def _check_chat_template(self) -> None:
        if self.chat_template is not None and not (CHAT_TEMPLATES / self.chat_template).is_file():
            shipped = sorted(p.name for p in CHAT_TEMPLATES.glob("*.jinja"))
            raise ValueError(
                f"VLLM_CHAT_TEMPLATE={self.chat_template!r} is not a template shipped in "
                f"deploy/chat_templates/ (those are: {', '.join(shipped)})"
            )

    def _check_tensor_parallel(self) -> None:
        if self.tensor_parallel_size and self.tensor_parallel_size != self.gpu_count:
            raise ValueError(
                f"VLLM_TENSOR_PARALLEL_SIZE={self.tensor_parallel_size} does not match the "
                f"{self.gpu_count} GPU(s) of VLLM_GPU={self.gpu_spec!r}: vLLM shards the model "
                "over exactly that many GPUs"
            )
