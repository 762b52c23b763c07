"""The seed's API, byte-compatible: ``GET /``, ``GET /health`` and ``POST /chat``.

``/`` and ``/health`` never wake the engine and need no key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ...core.version import __version__
from ...settings.settings import SERVICE_NAME, SERVICE_VERSION
from ..auth import require_api_key
from ..handlers import parse_body
from ..protocol import RequestModels
from ..responses import INFERENCE_ERRORS, json_body
from ..serving.meta import meta_headers
from ..serving.service import Service

__all__ = ["router"]


def _window_text(seconds: float) -> str:
    if seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds:g} seconds"


def router(models: RequestModels) -> APIRouter:
    api = APIRouter()

    @api.get("/")
    async def root(service: Service) -> dict[str, Any]:
        return {
            "service": SERVICE_NAME,
            "version": SERVICE_VERSION,
            "architecture": {
                "wrapper": "Always-on (no GPU)",
                "vllm": "Auto-scale to zero (with GPU)",
                "scaledown_window": _window_text(service.settings.scaledown_window),
            },
            "model": service.model_name,
            "package_version": __version__,  # the server's; "version" stays the seed API's
        }

    @api.get("/health")
    async def health(service: Service) -> dict[str, Any]:
        status = await service.transport.status()
        return {
            "status": "healthy",
            "wrapper_status": "running",
            "vllm_status": "auto-scaling (idle or active)",
            "model": service.model_name,
            "architecture": "separated",
            "engine_state": status.state,
        }

    @api.post("/chat", responses=INFERENCE_ERRORS, openapi_extra=json_body(models.chat))
    async def chat(request: Request, service: Service) -> JSONResponse:
        await require_api_key(request)  # before the body is read: no key, no parsing
        req = parse_body(models.chat, await request.body())
        result, meta = await service.complete(request, service.seed_body(req))
        choice = (result.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        return JSONResponse(
            {
                "content": message.get("content") or "",
                "usage": result.get("usage"),
                "model": result.get("model", service.model_name),
                "finish_reason": choice.get("finish_reason"),
                "id": result.get("id"),
                "metadata": meta,
            },
            headers=meta_headers(meta),
        )

    return api
