"""The rest of OpenAI's inference API: ``/v1/completions`` (legacy text completions, plain or
streamed), ``/v1/embeddings`` and ``/v1/responses`` (vLLM's own Responses API, plain or
streamed).

A text completion takes the chat completion's path (auth, limits, ledger, metrics, cold
starts, routing by ``model``), to vLLM's ``/v1/completions``; a plain one is cached like a
chat when it is deterministic (its stream is not: the cache replays chat chunks). Embeddings
go to an embedding model's engine, Responses to a chat model's (``serving/direct.py``).

Like chat completions, they are hot routes (plain Starlette routes, handed their requests by
``FastPath``): FastAPI's dependency machinery would add about 0.2 ms to each call.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from ..auth import require_api_key
from ..handlers import parse_body
from ..protocol import RequestModels
from ..serving.endpoints import COMPLETIONS, EMBEDDINGS, RESPONSES
from ..serving.meta import meta_headers
from ..serving.service import Serving
from .openai import HotRoute, completion_response, hot_operation, stream_response

__all__ = ["hot_routes", "openapi_paths"]


def _direct_response(body: dict[str, Any], meta: Any) -> Response:
    body["vllm_autoscale"] = meta
    return Response(orjson.dumps(body), media_type="application/json", headers=meta_headers(meta))


def hot_routes(models: RequestModels) -> list[HotRoute]:
    completion_model, embedding_model, responses_model = (
        models.completion, models.embedding, models.responses)  # fmt: skip

    async def completions(request: Request) -> Response:
        await require_api_key(request)  # before the body is read: no key, no parsing
        req = parse_body(completion_model, await request.body())
        service: Serving = request.app.state.service
        body = service.engine_body(req, endpoint=COMPLETIONS)
        if req.stream:
            return stream_response(await service.stream(request, body, cacheable=False))
        return completion_response(await service.complete(request, body))

    async def embeddings(request: Request) -> Response:
        await require_api_key(request)
        req = parse_body(embedding_model, await request.body())
        service: Serving = request.app.state.service
        return _direct_response(*await service.direct(
            request, service.engine_body(req, endpoint=EMBEDDINGS)))  # fmt: skip

    async def responses(request: Request) -> Response:
        await require_api_key(request)
        req = parse_body(responses_model, await request.body())
        service: Serving = request.app.state.service
        body = service.engine_body(req, endpoint=RESPONSES)
        if req.stream:  # vLLM's Responses events, relayed; never the cold fallback
            return stream_response(await service.stream(request, body, cacheable=False))
        return _direct_response(*await service.direct(request, body))

    return [HotRoute(path, handler, methods=["POST"])
            for path, handler in ((COMPLETIONS, completions), (EMBEDDINGS, embeddings),
                                  (RESPONSES, responses))]  # fmt: skip


def openapi_paths(models: RequestModels) -> dict[str, Any]:
    """Their OpenAPI entries, from the same request models that validate."""
    return {
        **hot_operation(COMPLETIONS, "Completions", models.completion,
                        "A text completion, or with stream=true a text/event-stream"),
        **hot_operation(EMBEDDINGS, "Embeddings", models.embedding, "The inputs' vectors"),
        **hot_operation(RESPONSES, "Responses", models.responses,
                        "A response, or with stream=true a text/event-stream of its events"),
    }  # fmt: skip
