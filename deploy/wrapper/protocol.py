"""The wrapper's wire format: pydantic models for every request body it accepts.

Two dialects share one engine: the seed's ``POST /chat`` (``ChatRequest``) and OpenAI's
``POST /v1/chat/completions`` (``ChatCompletionRequest``), plus the batch route. The OpenAI
model validates the fields the wrapper must reason about and passes every other field through
to vLLM untouched (``extra="allow"``), so new vLLM sampling options need no change here.

The service's request limits live here too: ``request_models(limits)`` builds the models with
the configured maxima as field constraints. The wrapper validates with those models and
FastAPI documents them, so the check, the 422 body (which names the field) and the OpenAPI
schema come from one definition and cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BatchItem",
    "BatchRequest",
    "ChatCompletionRequest",
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "Limits",
    "Message",
    "RequestModels",
    "ResponsesRequest",
    "request_models",
]

Role = Literal["system", "developer", "user", "assistant", "tool"]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class ChatMessage(BaseModel):
    """A message of the seed's ``/chat``: a role and plain text."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """The seed's ``POST /chat`` body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)

    def to_openai(self) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": [m.model_dump() for m in self.messages]}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body


class Message(BaseModel):
    """An OpenAI chat message; content may be text or a list of content parts."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions body; unknown fields pass through to vLLM."""

    # Strict: JSON types as the schema says them (no true for a number, no "1" for an int).
    model_config = ConfigDict(extra="allow", strict=True)

    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    """Ignored beyond a check: the service serves one model."""
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None

    def to_engine(self, model_name: str) -> dict[str, Any]:
        """The body vLLM gets: what the caller set, with the served model's name."""
        body = self.model_dump(exclude_none=True, exclude_unset=True)
        body["model"] = model_name
        return body


class CompletionRequest(BaseModel):
    """OpenAI's legacy text-completions body (``/v1/completions``); unknown fields pass
    through to vLLM."""

    model_config = ConfigDict(extra="allow", strict=True)

    prompt: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool | None = None
    suffix: str | None = None
    user: str | None = None

    def to_engine(self, model_name: str) -> dict[str, Any]:
        """The body vLLM gets: what the caller set, with the served model's name."""
        body = self.model_dump(exclude_none=True, exclude_unset=True)
        body["model"] = model_name
        return body


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings body (``/v1/embeddings``): text, or token ids, one or many."""

    model_config = ConfigDict(extra="allow", strict=True)

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    def to_engine(self, model_name: str) -> dict[str, Any]:
        """The body vLLM gets: what the caller set, with the served model's name."""
        body = self.model_dump(exclude_none=True, exclude_unset=True)
        body["model"] = model_name
        return body


class ResponsesRequest(BaseModel):
    """OpenAI's Responses body (``/v1/responses``), answered by vLLM's own Responses API;
    unknown fields pass through to vLLM."""

    model_config = ConfigDict(extra="allow", strict=True)

    input: str | list[dict[str, Any]]
    model: str | None = None
    stream: bool = False
    store: Literal[False] | None = None
    """The wrapper keeps no responses: an engine's stored ones would not outlive its
    scale-down, and every key of that engine could read them back by id."""
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    user: str | None = None

    def to_engine(self, model_name: str) -> dict[str, Any]:
        """The body vLLM gets: what the caller set, with the served model's name and
        ``store`` off."""
        body = self.model_dump(exclude_none=True, exclude_unset=True)
        body["model"] = model_name
        body["store"] = False
        return body


class BatchItem(ChatCompletionRequest):
    """One request of a batch: a chat completion that does not stream."""

    stream: Literal[False] = False


class BatchRequest(BaseModel):
    """Many chat completions in one call: the GPU side serves them concurrently."""

    model_config = ConfigDict(extra="forbid", strict=True)

    requests: list[BatchItem] = Field(min_length=1)
    max_concurrency: int | None = Field(default=None, ge=1)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(BaseModel):
    """Every error the wrapper answers: OpenAI's shape (validation errors add ``detail``)."""

    model_config = ConfigDict(extra="allow")

    error: ErrorDetail


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (``VLLM_MAX_MESSAGES``, ``VLLM_MAX_TOKENS_LIMIT``,
    ``VLLM_MAX_BATCH``)."""

    max_messages: int = 1024
    max_tokens: int = 8192
    max_batch: int = 256

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        """A ``Settings``' request limits (``max_messages``, ``max_tokens_limit``,
        ``max_batch``)."""
        return cls(settings.max_messages, settings.max_tokens_limit, settings.max_batch)


@dataclass(frozen=True)
class RequestModels:
    """The request models of one wrapper, with its limits as field constraints."""

    chat: type[ChatRequest]
    chat_completion: type[ChatCompletionRequest]
    batch: type[BatchRequest]
    completion: type[CompletionRequest]
    embedding: type[EmbeddingRequest]
    responses: type[ResponsesRequest]


@lru_cache(maxsize=16)
def request_models(limits: Limits) -> RequestModels:
    """The request models under ``limits``. Same names as the base models (the OpenAPI schema
    shows them so), with ``maxItems`` and ``maximum`` where the limits apply."""
    messages_max = limits.max_messages
    tokens_max = limits.max_tokens

    class ChatRequest(_ChatRequest):
        __doc__ = _ChatRequest.__doc__
        messages: list[ChatMessage] = Field(min_length=1, max_length=messages_max)
        max_tokens: int | None = Field(default=None, ge=1, le=tokens_max)

    class ChatCompletionRequest(_ChatCompletionRequest):
        __doc__ = _ChatCompletionRequest.__doc__
        messages: list[Message] = Field(min_length=1, max_length=messages_max)
        max_tokens: int | None = Field(default=None, ge=1, le=tokens_max)
        max_completion_tokens: int | None = Field(default=None, ge=1, le=tokens_max)

    class BatchItem(ChatCompletionRequest):
        __doc__ = _BatchItem.__doc__
        stream: Literal[False] = False

    class BatchRequest(_BatchRequest):
        __doc__ = _BatchRequest.__doc__
        requests: list[BatchItem] = Field(  # type: ignore[assignment]
            min_length=1, max_length=limits.max_batch
        )

    # A list of prompts (or of inputs to embed) is a batch: at most VLLM_MAX_BATCH of them.
    batch_max = limits.max_batch
    texts = (
        str
        | Annotated[list[str], Field(min_length=1, max_length=batch_max)]
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[list[int]], Field(min_length=1, max_length=batch_max)]
    )

    class CompletionRequest(_CompletionRequest):
        __doc__ = _CompletionRequest.__doc__
        prompt: texts  # type: ignore[valid-type]
        max_tokens: int | None = Field(default=None, ge=1, le=tokens_max)

    class EmbeddingRequest(_EmbeddingRequest):
        __doc__ = _EmbeddingRequest.__doc__
        input: texts  # type: ignore[valid-type]

    class ResponsesRequest(_ResponsesRequest):
        __doc__ = _ResponsesRequest.__doc__
        input: str | Annotated[list[dict[str, Any]], Field(max_length=messages_max)]
        max_output_tokens: int | None = Field(default=None, ge=1, le=tokens_max)

    return RequestModels(ChatRequest, ChatCompletionRequest, BatchRequest, CompletionRequest,
                         EmbeddingRequest, ResponsesRequest)  # fmt: skip


_ChatRequest, _ChatCompletionRequest = ChatRequest, ChatCompletionRequest
_CompletionRequest, _EmbeddingRequest = CompletionRequest, EmbeddingRequest
_ResponsesRequest = ResponsesRequest
_BatchItem, _BatchRequest = BatchItem, BatchRequest
