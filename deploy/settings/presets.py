"""Model presets (what a model family needs from vLLM, the GPU it fits on) and ``ModelSpec``,
one model of a service that serves several (``VLLM_MODELS``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CHAT_TEMPLATES", "MODEL_PRESETS", "NO_PRESET", "ModelPreset", "ModelSpec"]

CHAT_TEMPLATES = Path(__file__).resolve().parent.parent / "chat_templates"


@dataclass(frozen=True)
class ModelPreset:
    """What a model family needs from vLLM for tool calling and reasoning, the GPU it fits
    on, and what it accepts (the wrapper reports it on ``/v1/models``)."""

    tool_call_parser: str | None
    chat_template: str | None
    gpu: str = "A100-80GB"
    max_model_len: int = 8192
    reasoning_parser: str | None = None
    image_inputs: bool = False
    """The model reads images (a vision-language model); every preset here is text-only."""
    runner: str = "generate"
    """vLLM's ``--runner``: "generate" (chat, completions) or "pooling" (an embedding model,
    served on ``/v1/embeddings``)."""


MODEL_PRESETS: dict[str, ModelPreset] = {
    # Llama 3.1 calls tools as bare JSON; the template that teaches it so is not in the wheel.
    "meta-llama/Llama-3.1-8B-Instruct": ModelPreset(
        "llama3_json", str(CHAT_TEMPLATES / "llama3.1_json_tools.jinja")
    ),
    "meta-llama/Llama-3.1-70B-Instruct": ModelPreset(
        "llama3_json", str(CHAT_TEMPLATES / "llama3.1_json_tools.jinja"), gpu="A100-80GB:2"
    ),
    # Mistral v0.2's own template has no tool turns, and vLLM's mistral parser needs v0.3+.
    "mistralai/Mistral-7B-Instruct-v0.2": ModelPreset(None, None, max_model_len=8192),
    # Reasoning models: the reasoning parser moves the thinking out of `content` into the
    # message's `reasoning` field. Thinking is long, hence the longer contexts.
    # Qwen3's own template renders tools and <tool_call> turns in the Hermes style.
    "Qwen/Qwen3-8B": ModelPreset("hermes", None, max_model_len=32768, reasoning_parser="qwen3"),
    # No vLLM tool parser reads the R1 distills' tool calls (`deepseek_v3` is for DeepSeek-V3
    # and R1-0528 with their own template, and the distills' template never renders `tools`):
    # tool calling stays off; reasoning and structured output work.
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": ModelPreset(
        None, None, max_model_len=32768, reasoning_parser="deepseek_r1"
    ),
    # vLLM renders gpt-oss prompts with the Harmony format itself (no chat template); its
    # `openai` tool parser and `openai_gptoss` reasoning parser read the Harmony channels.
    # MXFP4 weights: Hopper runs them natively (vLLM's gpt-oss recipe).
    "openai/gpt-oss-20b": ModelPreset(
        "openai", None, gpu="H100", max_model_len=32768, reasoning_parser="openai_gptoss"
    ),
    # Embedding models: vLLM's pooling runner. 22M parameters fit the cheapest GPU.
    "sentence-transformers/all-MiniLM-L6-v2": ModelPreset(
        None, None, gpu="T4", max_model_len=256, runner="pooling"
    ),
    "BAAI/bge-small-en-v1.5": ModelPreset(
        None, None, gpu="T4", max_model_len=512, runner="pooling"
    ),
}
NO_PRESET = ModelPreset(None, None)
"""What a model with no preset gets: no parsers, no template of ours, the default GPU."""


class ModelSpec(BaseModel):
    """One model of a service that serves several (``VLLM_MODELS``, a JSON list of these).
    Each is its own engine (its own GPU class on Modal) with its own window and bounds,
    behind the one wrapper; a field left out takes the service-wide setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,127}$")
    """What requests say in ``model``."""
    model: str | None = None
    """The weights (Hugging Face id); default: ``name``."""
    model_revision: str | None = None
    gpu: str | None = None
    tensor_parallel_size: int | None = Field(default=None, ge=1, le=8)
    max_model_len: int | None = Field(default=None, ge=256)
    max_num_seqs: int | None = Field(default=None, ge=1, le=1024)
    scaledown_window: int | None = Field(default=None, ge=2, le=3600)
    max_containers: int | None = Field(default=None, ge=1, le=100)
    runner: Literal["generate", "pooling"] | None = None
    """"pooling" for an embedding model; default from the model's preset, else "generate"."""
    tool_call_parser: str | None = None
    chat_template: str | None = None
    reasoning_parser: str | None = None
    gpu_price_per_hour: float | None = Field(default=None, ge=0)
    adapters: dict[str, str] = Field(default_factory=dict)
    """LoRA adapters served on this model: name -> a local folder, a path on the models
    Volume, or a Hugging Face repo id. ``model=<adapter>`` routes here."""
    enable_lora: bool | None = None
    """Start with LoRA on even without declared adapters (to load them at run time)."""
    max_lora_rank: int = Field(default=16, ge=1, le=512)
