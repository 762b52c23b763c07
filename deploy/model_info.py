"""What the wrapper knows about the served model, without waking the engine.

The engine is started from a configuration the wrapper can read too: locally the
``EngineConfig`` its ``LocalTransport`` holds, on Modal the ``Settings`` the GPU class is
built from (``Settings.gpu_engine_config``). ``ModelInfo`` is that knowledge in one place:
the context length, which parsers are on (tool calls, reasoning), what inputs the model takes,
and where its tokenizer and chat template come from. ``GET /v1/models`` reports it and
``POST /tokenize`` counts with it, so neither ever needs the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .config import MODEL_PRESETS, Settings

if TYPE_CHECKING:  # the engine (aiohttp, subprocess) is imported only where it runs
    from .engine import EngineConfig

__all__ = ["ModelInfo", "describe_served_model"]


@dataclass(frozen=True)
class ModelInfo:
    """The served model as the engine is configured to run it."""

    name: str
    """The name clients send in ``"model"`` (vLLM's ``--served-model-name``)."""
    max_model_len: int
    """Context length in tokens, prompt and completion together (``--max-model-len``)."""
    tool_parser: str | None = None
    """vLLM's ``--tool-call-parser``; None: tool calls are not parsed (tool calling off)."""
    reasoning_parser: str | None = None
    """vLLM's ``--reasoning-parser``; None: no separate reasoning output."""
    structured_output: bool = True
    """``response_format`` json_schema: vLLM constrains decoding to the schema."""
    image_inputs: bool = False
    max_output_tokens: int | None = None
    """The most tokens one request may ask for (the wrapper's ``max_tokens`` limit)."""
    tokenizer: str | None = None
    """Where the tokenizer loads from: a local model folder or a Hugging Face model id."""
    revision: str | None = None
    """The Hub revision of ``tokenizer`` (a model id only)."""
    chat_template: str | None = None
    """The engine's ``--chat-template`` file; None: the tokenizer's own template."""

    @property
    def tool_calling(self) -> bool:
        return self.tool_parser is not None

    @classmethod
    def from_engine_config(cls, config: EngineConfig) -> ModelInfo:
        """The model an ``EngineConfig`` starts (read only: nothing is started)."""
        preset = MODEL_PRESETS.get(config.served_model_name)
        return cls(
            name=config.served_model_name,
            max_model_len=config.max_model_len,
            tool_parser=config.tool_call_parser,
            reasoning_parser=config.reasoning_parser,
            image_inputs=preset.image_inputs if preset else False,
            tokenizer=config.model,
            revision=config.revision,
            chat_template=config.chat_template,
        )

    def capabilities(self) -> dict[str, Any]:
        """What a client may rely on (the ``capabilities`` object of ``/v1/models``)."""
        return {
            "tool_calling": self.tool_calling,
            "tool_parser": self.tool_parser,
            "structured_output": self.structured_output,
            "reasoning": self.reasoning_parser is not None,
            "reasoning_parser": self.reasoning_parser,
            "image_inputs": self.image_inputs,
            "max_output_tokens": self.max_output_tokens,
            "token_counting": True,  # POST /tokenize
        }

    def model_card(self) -> dict[str, Any]:
        """One entry of ``GET /v1/models``: OpenAI's model object with vLLM's
        ``max_model_len`` (as vLLM's own ``/v1/models`` has it) and ``capabilities``."""
        return {
            "id": self.name,
            "object": "model",
            "created": 0,
            "owned_by": "vllm-autoscale",
            "root": self.name,
            "parent": None,
            "max_model_len": self.max_model_len,
            "capabilities": self.capabilities(),
        }


def describe_served_model(transport: object, settings: Settings) -> ModelInfo:
    """The model ``transport`` serves, read from configuration only.

    A transport that supervises its engine itself (``LocalTransport``) holds the engine's
    ``EngineConfig`` as ``transport.engine.config``: that is the truth locally (SmolLM2 on
    CPU, whatever ``VLLM_MODEL`` says). A remote one (``ModalTransport``) does not: the GPU
    class runs ``settings.gpu_engine_config()``, so the settings are the truth there.
    """
    config = getattr(getattr(transport, "engine", None), "config", None)
    if config is not None and hasattr(config, "served_model_name"):
        info = ModelInfo.from_engine_config(config)
    else:
        info = settings.model_info()
    name = getattr(transport, "model_name", None) or info.name
    limit = min(settings.max_tokens_limit, info.max_model_len)
    return replace(info, name=name, max_output_tokens=limit)
