"""What the wrapper knows about the served model, without waking the engine.

The engine is started from a configuration the wrapper can read too: locally the
``EngineConfig`` its ``LocalTransport`` holds, on Modal the ``Settings`` the GPU class is
built from (``deploy.engine.process.gpu_engine_config``). ``ModelInfo`` is that knowledge in
one place: the context length, which parsers are on (tool calls, reasoning), what inputs the
model takes, and where its tokenizer and chat template come from. ``GET /v1/models`` reports
it and ``POST /tokenize`` counts with it, so neither ever needs the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ModelInfo"]


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
    runner: str = "generate"
    """vLLM's ``--runner``: "generate" (chat and text completions) or "pooling" (embeddings)."""

    @property
    def tool_calling(self) -> bool:
        return self.tool_parser is not None

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The OpenAI routes this model answers on."""
        if self.runner == "pooling":
            return ("/v1/embeddings",)
        return ("/v1/chat/completions", "/v1/completions", "/v1/responses")

    @classmethod
    def from_engine_config(cls, config: Any, image_inputs: bool = False) -> ModelInfo:
        """The model an engine configuration (``deploy.engine.process.EngineConfig``, read by
        its fields) starts; nothing is started."""
        return cls(
            name=config.served_model_name,
            max_model_len=config.max_model_len,
            tool_parser=config.tool_call_parser,
            reasoning_parser=config.reasoning_parser,
            image_inputs=image_inputs,
            tokenizer=config.model,
            revision=config.revision,
            chat_template=config.chat_template,
            runner=config.runner,
        )

    def capabilities(self) -> dict[str, Any]:
        """What a client may rely on (the ``capabilities`` object of ``/v1/models``)."""
        if self.runner == "pooling":
            return {"task": "embedding", "endpoints": list(self.endpoints),
                    "tool_calling": False, "structured_output": False,
                    "token_counting": False}  # fmt: skip
        return {
            "task": "generation",
            "endpoints": list(self.endpoints),
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
