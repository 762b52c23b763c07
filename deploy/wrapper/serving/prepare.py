"""From a validated request to what the engine is sent, and the transport that takes it.

``Preparer`` checks the model name (404 listing what is served), writes the engine's body
(the name the routed engine knows, the default ``max_tokens``, the per-key prefix-cache
salt), routes it to its served model, and picks the engine or, while it is cold, the cold
fallback. Request limits are checked earlier, by the request models themselves
(``deploy/wrapper/protocol.py``).
"""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import Request

from ...core.contract import ENDPOINT_KEY, OUTPUT_CAPS, Endpoint, EngineTransport
from ...core.errors import InvalidRequest
from ...gateway import KeyRecord
from ...settings.settings import Settings
from ...transports.fallback import ColdRouter
from ..protocol import (
    ChatCompletionRequest,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponsesRequest,
)
from .endpoints import CHAT, COMPLETIONS, RESPONSES, check_endpoint
from .registry import ModelRegistry, ServedModel

__all__ = ["Preparer"]

_INT64 = (-(2**63), 2**64 - 1)
OpenAIRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest | ResponsesRequest
# Where each generating route takes the operator's default output cap (embeddings have none).
_DEFAULT_CAP_FIELD: dict[Endpoint, str] = {
    CHAT: "max_tokens", COMPLETIONS: "max_tokens", RESPONSES: "max_output_tokens",
}  # fmt: skip


class Preparer:
    """One per app: the served models, the settings, and the cold fallback's router."""

    def __init__(self, models: ModelRegistry, settings: Settings, cold: ColdRouter | None) -> None:
        self.models, self.settings, self.cold = models, settings, cold
        self.default_name = models.default.name

    def check_model(self, model: str | None, param: str = "model") -> ServedModel:
        """The served model ``model`` names (404 listing what is served, when none)."""
        return self.models.resolve(model, param)[0]

    def _with_default_cap(self, body: dict[str, Any], cap: str = "max_tokens") -> dict[str, Any]:
        """The operator's default output cap where the request sets none (``cap``: the
        route's name for it)."""
        default = self.settings.default_max_tokens
        if default and not any(body.get(name) for name in OUTPUT_CAPS):
            body[cap] = default
        return body

    def engine_body(
        self, req: OpenAIRequest, param_prefix: str = "", endpoint: Endpoint = CHAT
    ) -> dict[str, Any]:
        """vLLM's body for an OpenAI request (after the model check): ``model`` is the name the
        routed engine knows (a model's, or an adapter's on its base); the route it is for
        travels in the body (``ENDPOINT_KEY``), never as the caller set it."""
        served, name = self.models.resolve(req.model, f"{param_prefix}model")
        check_endpoint(served, endpoint, f"{param_prefix}model")
        if req.model_extra:
            _check_integers(req.model_extra, param_prefix)
        body = req.to_engine(name)
        body.pop(ENDPOINT_KEY, None)
        if endpoint != CHAT:
            body[ENDPOINT_KEY] = endpoint
        cap = _DEFAULT_CAP_FIELD.get(endpoint)
        return body if cap is None else self._with_default_cap(body, cap)

    def seed_body(self, req: ChatRequest) -> dict[str, Any]:
        """vLLM's body for the seed's ``/chat`` request."""
        return self._with_default_cap({**req.to_openai(), "model": self.default_name})

    def route(self, body: dict[str, Any]) -> ServedModel:
        """The served model an engine body goes to (its ``model`` was resolved already)."""
        return self.models.resolve(body.get("model"))[0]

    def salt(self, caller: KeyRecord, body: dict[str, Any]) -> None:
        """Per-key prefix caches (``VLLM_PREFIX_CACHE_ISOLATION=per_key``): vLLM shares cached
        prefixes only between requests with the same ``cache_salt``. The salt comes from the
        key's hash, which no other caller knows; a caller's own salt is replaced."""
        if self.settings.prefix_cache_isolation == "per_key":
            body["cache_salt"] = hashlib.sha256(b"cache-salt:" + caller.sha256.encode()).hexdigest()

    async def pick(self, request: Request, engine: EngineTransport) -> EngineTransport:
        """The engine, or the cold fallback while the engine is cold (by its policy)."""
        if self.cold is None:
            return engine
        return await self.cold.pick(engine, request.headers)


def _check_integers(fields: dict[str, Any], prefix: str) -> None:
    """Pass-through fields go to vLLM unread, but an integer past 64 bits makes it fail
    (a 500): answer 422 naming the field instead."""
    stack: list[tuple[str, Any]] = [(f"{prefix}{k}", v) for k, v in fields.items()]
    while stack:
        path, value = stack.pop()
        if isinstance(value, int) and not isinstance(value, bool):
            if not _INT64[0] <= value <= _INT64[1]:
                raise InvalidRequest(f"{path} is out of range (a 64-bit integer)", path)
        elif isinstance(value, dict):
            stack.extend((f"{path}.{k}", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}", v) for i, v in enumerate(value))
