"""The contract between the wrapper and an engine: what a transport offers and what it returns.

Both sides import this leaf module (it imports nothing of theirs): the wrapper talks to an
``EngineTransport``; a transport answers with ``Reply`` objects; the GPU container's
``InferenceServer`` answers with the same ``Reply`` objects across the Modal call.

A ``Reply`` carries how the request was served (``Facts``) the same way for every kind of call:
- chat: one ``Reply`` whose body is vLLM's JSON response;
- batch: one ``Reply`` whose body is the list of results (an ``EngineError`` in a failed slot);
- stream: a ``Reply`` per chunk; the first one carries the facts.

What a transport can do beyond ``EngineTransport`` it declares by implementing an optional
protocol, which the wrapper checks with ``isinstance`` (never by probing attributes):
``AdapterHost`` (LoRA adapters loaded and unloaded at run time), ``Describes`` (it holds
the configuration its engine starts from, which describes the served model) and ``Metered``
(it sees its engines' lives exactly: when each started, served and stopped).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar, get_args, runtime_checkable

from .errors import EngineError

__all__ = [
    "ENDPOINTS",
    "ENDPOINT_KEY",
    "OUTPUT_CAPS",
    "PROMPT_FIELDS",
    "RESPONSE_ENDS",
    "AdapterHost",
    "BatchResults",
    "ContainerLife",
    "Describes",
    "Endpoint",
    "EngineSetup",
    "EngineState",
    "EngineStatus",
    "EngineTransport",
    "Facts",
    "Metered",
    "Reply",
    "engine_endpoint",
]

B = TypeVar("B")
EngineState = Literal["cold", "starting", "warm", "failed"]
BatchResults = list[dict[str, Any] | EngineError]

# Which of vLLM's OpenAI routes a body is for. The body carries it (under ``ENDPOINT_KEY``)
# through every transport unchanged, Modal's function calls included; the engine side takes
# it out before it forwards. No key: a chat completion.
Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]
ENDPOINTS: frozenset[str] = frozenset(get_args(Endpoint))
ENDPOINT_KEY = "vllm_autoscale_endpoint"
OUTPUT_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
"""The body fields that cap a request's output: chat's two names, then Responses' one."""
PROMPT_FIELDS = ("messages", "prompt", "input", "instructions")
"""The body fields that carry a request's prompt: chat's, text completions', Responses'."""
RESPONSE_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
"""The events a Responses stream ends with (no ``[DONE]`` follows); the last carries the usage."""


def engine_endpoint(body: dict[str, Any]) -> tuple[Endpoint, dict[str, Any]]:
    """The route ``body`` is for and the body vLLM gets (without the key). Only vLLM's
    inference routes are reachable this way: any other value is refused."""
    if ENDPOINT_KEY not in body:
        return "/v1/chat/completions", body
    body = dict(body)
    endpoint = body.pop(ENDPOINT_KEY)
    if endpoint not in ENDPOINTS:
        raise ValueError(f"not an engine endpoint: {endpoint!r}")
    return endpoint, body


@dataclass(slots=True)
class Facts:
    """How one request was served; the wrapper reports it in headers, metadata and cost."""

    cold_start: bool = False
    """The request waited for an engine (a container, locally a process) to start."""
    queue_wait_s: float = 0.0
    """Seconds before an engine began serving it."""
    container: str | None = None
    """The engine container that served it (Modal), when the engine side says."""
    booted_at: float | None = None
    """Unix time that container began serving."""
    up_since: float | None = None
    """Unix time that container began costing: its start, or its restore from a snapshot."""
    engine_s: float = 0.0
    """Seconds the engine itself spent, as measured on the engine side."""

    def settle(self, sent_at: float, seen: set[str]) -> Facts:
        """Complete the facts the engine side sent, for a call sent at ``sent_at`` (Unix
        time): a container not ``seen`` before that booted after the call was sent means
        the call waited for it; the wait is the call's time the engine did not account for."""
        if self.container is not None and self.container not in seen:
            seen.add(self.container)
            self.cold_start = self.booted_at is not None and self.booted_at >= sent_at
        self.queue_wait_s = max(0.0, time.time() - sent_at - self.engine_s)
        return self


@dataclass(slots=True)
class Reply(Generic[B]):
    """An engine's answer (or, in a stream, one chunk of it) and how it was served."""

    body: B
    facts: Facts | None = None
    """Always set on chat and batch replies and on a stream's first chunk."""


@dataclass
class EngineStatus:
    """What the wrapper knows about the engine without waking it."""

    state: EngineState
    queue_depth: int
    in_flight: int
    cold_starts: int
    scaledown_window: float | None
    last_request_at: float | None = None
    """Unix time of the last request the engine served."""
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "extra"}
        data.update(self.extra)
        return data


class EngineTransport(Protocol):
    """The engine as the wrapper sees it: OpenAI chat-completion bodies in, replies out."""

    model_name: str

    async def chat(self, body: dict[str, Any]) -> Reply[dict[str, Any]]: ...

    def stream(self, body: dict[str, Any]) -> AsyncIterator[Reply[dict[str, Any]]]: ...

    async def batch(
        self, bodies: Sequence[dict[str, Any]], max_concurrency: int | None = None
    ) -> Reply[BatchResults]: ...

    async def status(self) -> EngineStatus:
        """Must never start the engine."""
        ...

    async def warmup(self) -> EngineStatus:
        """Begin starting the engine and return at once."""
        ...

    def state_hint(self) -> EngineState:
        """The engine's state as this wrapper last saw it: no I/O, cheap enough to ask on
        every request (the cold fallback does)."""
        ...

    async def aclose(self) -> None: ...


# -- what a transport may declare besides ---------------------------------------------------------


@runtime_checkable
class AdapterHost(Protocol):
    """A transport whose engine serves LoRA adapters on its model, and loads and unloads them
    at run time (``POST``/``DELETE /v1/adapters``); requests name one in ``model``."""

    def adapters(self) -> dict[str, str]:
        """The adapters its engine will serve (name -> source) besides those the model's
        settings declare; no I/O."""
        ...

    async def load_adapter(self, name: str, path: str) -> object: ...

    async def unload_adapter(self, name: str) -> object: ...


class EngineSetup(Protocol):
    """What an engine configuration says of the model it starts (``EngineConfig``'s fields,
    as ``ModelInfo.from_engine_config`` reads them)."""

    @property
    def model(self) -> str: ...
    @property
    def served_model_name(self) -> str: ...
    @property
    def revision(self) -> str | None: ...
    @property
    def max_model_len(self) -> int: ...
    @property
    def tool_call_parser(self) -> str | None: ...
    @property
    def reasoning_parser(self) -> str | None: ...
    @property
    def chat_template(self) -> str | None: ...
    @property
    def runner(self) -> str:
        """vLLM's ``--runner``: "generate" (chat, completions) or "pooling" (embeddings)."""
        ...


@runtime_checkable
class Describes(Protocol):
    """A transport that holds the configuration its engine starts from (locally, the engine
    process it supervises): the served model is described from it, never from the engine.
    A remote one does not declare it: the settings its GPU class is built from say there."""

    def engine_config(self) -> EngineSetup: ...


@dataclass(slots=True)
class ContainerLife:
    """One engine container's (locally: one vLLM process's) life, as its GPU is billed: up
    from ``up_since``, serving from ``ready_at``, gone at ``stopped_at`` (None: still up)."""

    container: str
    up_since: float
    ready_at: float | None = None
    stopped_at: float | None = None


@runtime_checkable
class Metered(Protocol):
    """A transport that sees its engines start and stop (locally, the process it supervises),
    so their up-time is measured rather than inferred from the replies' facts."""

    def lives(self) -> list[ContainerLife]:
        """Its engines' recent lives, oldest first; no I/O."""
        ...
