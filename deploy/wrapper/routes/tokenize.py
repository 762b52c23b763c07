"""``POST /tokenize``: vLLM's tokenize route, answered by the wrapper without the engine.

The request and response have vLLM's shapes (``vllm/entrypoints/serve/tokenize/protocol.py``):
a chat (``messages``, ``tools``, ``add_generation_prompt``...) or a plain ``prompt`` in,
``{"count", "max_model_len", "tokens", "token_strs"}`` out. The count is the prompt a chat
completion of the same messages would send the model, so it equals vLLM's
``usage.prompt_tokens``; the wrapper computes it with the served model's tokenizer
(``deploy/wrapper/tokenize/counter.py``), so counting never wakes the GPU.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ...core.errors import error_body
from ..auth import require_api_key
from ..handlers import InvalidRequest, parse_body
from ..protocol import ErrorResponse, Limits, Message
from ..serving.service import Service
from ..tokenize.counter import TokenCounter, TokenCountError
from .service import count_request

__all__ = ["TokenizeChatRequest", "TokenizePromptRequest", "TokenizeResponse", "router"]

TOKENIZE = "/tokenize"


class TokenizeChatRequest(BaseModel):
    """vLLM's ``TokenizeChatRequest``: the messages (and tools) of a chat completion."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    add_generation_prompt: bool = True
    """Count the assistant header the model's answer starts after (a completion does)."""
    continue_final_message: bool = False
    add_special_tokens: bool = False
    """Special tokens on top of the template's (vLLM's default for chats: no)."""
    chat_template_kwargs: dict[str, Any] | None = None
    """As in the chat completion (e.g. ``{"enable_thinking": false}`` for Qwen3)."""
    return_token_strs: bool | None = False


class TokenizePromptRequest(BaseModel):
    """vLLM's ``TokenizeCompletionRequest``: a plain text prompt."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class TokenizeResponse(BaseModel):
    """vLLM's ``TokenizeResponse``."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


@lru_cache(maxsize=16)
def _chat_model(limits: Limits) -> type[TokenizeChatRequest]:
    class TokenizeChatRequest(_TokenizeChatRequest):
        __doc__ = _TokenizeChatRequest.__doc__
        messages: list[Message] = Field(min_length=1, max_length=limits.max_messages)

    return TokenizeChatRequest


_TokenizeChatRequest = TokenizeChatRequest


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its ``$defs`` substituted in: the route documents its body itself
    (it reads the body after auth), and every ``$ref`` in the app's OpenAPI must resolve."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(copy.deepcopy(defs[ref.rsplit("/", 1)[1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def _is_chat(raw: bytes) -> bool:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False  # the prompt model's parse names the broken body
    return isinstance(data, dict) and "messages" in data


def router(limits: Limits) -> APIRouter:
    """``POST /tokenize``, with the service's message limit."""
    chat_model = _chat_model(limits)
    chat_schema = _inline(chat_model.model_json_schema())
    prompt_schema = _inline(TokenizePromptRequest.model_json_schema())
    body_schema = {"schema": {"anyOf": [chat_schema, prompt_schema]}}
    api = APIRouter()

    @api.post(
        TOKENIZE,
        response_model=None,
        responses={
            200: {"model": TokenizeResponse},
            **{code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 429, 501)},
        },
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": body_schema}}
        },
    )
    async def tokenize(request: Request, service: Service) -> JSONResponse:
        """Count a chat's (or a prompt's) tokens as the served model will see them; never
        wakes the engine, but counts as a request under the caller's limits. 501 when this
        wrapper cannot load the model's tokenizer."""
        caller = await require_api_key(request)  # before the body is read: no key, no parsing
        raw = await request.body()
        try:
            if _is_chat(raw):
                chat = parse_body(chat_model, raw)
                counter: TokenCounter = service.check_model(chat.model).counter
                count_request(request, caller)
                result = await counter.count_chat(
                    [m.model_dump(exclude_none=True, exclude_unset=True) for m in chat.messages],
                    chat.tools,
                    add_generation_prompt=chat.add_generation_prompt,
                    continue_final_message=chat.continue_final_message,
                    add_special_tokens=chat.add_special_tokens,
                    chat_template_kwargs=chat.chat_template_kwargs,
                    return_token_strs=bool(chat.return_token_strs),
                )
            else:
                prompt = parse_body(TokenizePromptRequest, raw)
                counter = service.check_model(prompt.model).counter
                count_request(request, caller)
                result = await counter.count_prompt(
                    prompt.prompt,
                    add_special_tokens=prompt.add_special_tokens,
                    return_token_strs=bool(prompt.return_token_strs),
                )
        except TokenCountError as exc:
            if exc.status == HTTPStatus.NOT_IMPLEMENTED:
                return JSONResponse(
                    error_body(exc.message, type="not_implemented_error", code=exc.status),
                    status_code=exc.status,
                )
            raise InvalidRequest(exc.message, exc.param or "messages", exc.status) from None
        return JSONResponse(result)

    return api
