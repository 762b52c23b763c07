"""The OpenAI-compatible API: ``/v1/chat/completions`` (plain or streamed), the batch route
and ``/v1/models``.

``/v1/chat/completions`` is the hot path. It is a plain Starlette route (``HotRoute``): no
FastAPI dependency solving, one pydantic parse of the raw bytes, its errors through the app's
exception handlers like any route's. ``openapi_paths`` documents it from the same request
model it validates with.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import Scope

from ..auth import Caller, require_api_key
from ..handlers import parse_body
from ..protocol import ErrorResponse, RequestModels
from ..responses import AUTH_ERRORS, INFERENCE_ERRORS, json_body
from ..serving.completion import Completion
from ..serving.meta import meta_headers
from ..serving.registry import ModelRegistry
from ..serving.service import Service, Serving
from ..serving.streaming import PumpedStream, sse_stream
from ..serving.streams import Replay, StreamRun

__all__ = [
    "CHAT_COMPLETIONS",
    "HotRoute",
    "completion_response",
    "hot_route",
    "openapi_paths",
    "router",
    "stream_response",
]

CHAT_COMPLETIONS = "/v1/chat/completions"

# What ``/v1/models`` shows a key that is not an admin's: not ``root``, which for an adapter
# is where its weights came from (a path on the server, a private Hub repository).
_PUBLIC_CARD = frozenset(
    {
        "id",
        "object",
        "created",
        "owned_by",
        "parent",
        "max_model_len",
        "capabilities",
        "state",
        "aliases",
    }
)


class HotRoute(Route):
    """A Starlette route that names itself in the scope (the metrics' route label)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.FULL:
            child["route"] = self
        return match, child


def hot_route(models: RequestModels) -> HotRoute:
    """``POST /v1/chat/completions``, validated with ``models.chat_completion``."""
    model = models.chat_completion

    async def chat_completions(request: Request) -> Response:
        await require_api_key(request)
        req = parse_body(model, await request.body())
        service: Serving = request.app.state.service
        body = service.engine_body(req)
        if req.stream:
            return stream_response(await service.stream(request, body))
        return completion_response(await service.complete(request, body))

    return HotRoute(CHAT_COMPLETIONS, chat_completions, methods=["POST"])


def completion_response(done: Completion) -> Response:
    """A chat completion with its call's meta, in its body and its headers."""
    body, meta = done
    body["vllm_autoscale"] = meta
    return Response(orjson.dumps(body), media_type="application/json", headers=meta_headers(meta))


def stream_response(stream: StreamRun | Replay) -> Response:
    """A stream as SSE: its pump stopped and its books kept however it ends."""
    if isinstance(stream, Replay):
        return sse_stream(stream.events, stream.headers)
    return PumpedStream(stream.events, stream.pump, media_type="text/event-stream",
                        headers=stream.headers, on_close=stream.closed)  # fmt: skip


def hot_operation(path: str, summary: str, body: type, answer: str) -> dict[str, Any]:
    """A hot route's OpenAPI entry (FastAPI documents only its own routes)."""
    ref = "#/components/schemas/{}"
    errors = {
        str(code): {"description": "Error", "content": {"application/json": {"schema": {
            "$ref": ref.format(ErrorResponse.__name__)}}}}
        for code in INFERENCE_ERRORS
    }  # fmt: skip
    content: dict[str, Any] = {"application/json": {"schema": {}}}
    if "stream" in answer:
        content["text/event-stream"] = {}
    operation = {
        "summary": summary,
        "operationId": summary.lower().replace(" ", "_") + path.replace("/", "_") + "_post",
        **json_body(body),
        "responses": {"200": {"description": answer, "content": content}, **errors},
    }  # fmt: skip
    return {path: {"post": operation}}


def openapi_paths(models: RequestModels) -> dict[str, Any]:
    """The chat completions route's OpenAPI entry."""
    return hot_operation(CHAT_COMPLETIONS, "Chat Completions", models.chat_completion,
                         "A chat completion, or with stream=true a text/event-stream")  # fmt: skip


def router(limited: RequestModels) -> APIRouter:
    api = APIRouter()

    @api.post(
        f"{CHAT_COMPLETIONS}/batch",
        responses=INFERENCE_ERRORS,
        openapi_extra=json_body(limited.batch),
    )
    async def chat_batch(request: Request, service: Service) -> JSONResponse:
        await require_api_key(request)  # before the body is read: no key, no parsing
        req = parse_body(limited.batch, await request.body())
        result, meta = await service.batch(request, req)
        return JSONResponse(result, headers=meta_headers(meta))

    @api.get("/v1/models", responses=AUTH_ERRORS)
    async def models(request: Request, caller: Caller) -> dict[str, Any]:
        """Every model and adapter served. An admin key also sees each adapter's ``root``
        (the path or Hub id its weights came from); other keys see what a client needs."""
        # From configuration and the engines' last seen states: listing never wakes a GPU.
        registry: ModelRegistry = request.app.state.models
        cards = registry.cards()
        if not caller.is_admin:
            cards = [{k: v for k, v in card.items() if k in _PUBLIC_CARD} for card in cards]
        return {"object": "list", "data": cards}

    return api
