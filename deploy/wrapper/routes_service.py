"""The service's own routes: ``/status``, ``/warmup`` (any key), ``/metrics`` (an admin key:
it names every key).

``/status`` and ``/metrics`` never wake the engine; ``/warmup`` starts it and returns at once.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse, Response

from .auth import require_admin, require_api_key
from .responses import AUTH_ERRORS, errors
from .service import InferenceService, Service

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(require_api_key)], responses=AUTH_ERRORS)


async def _status(service: InferenceService) -> dict[str, Any]:
    st = await service.transport.status()
    service.metrics.queue_depth.set(st.queue_depth)
    service.metrics.cold_starts.set(st.cold_starts)
    out = {"model": service.model_name, **st.to_dict()}
    if len(service.models) > 1:  # the default model above; every model, each on its own
        out["models"] = {
            name: (await served.transport.status()).to_dict()
            for name, served in service.models.models.items()
        }
    cache = service.gateway.cache
    if cache is not None:  # this wrapper's own (the cache is per process)
        out["cache"] = {"entries": len(cache), "bytes": cache.bytes, "hits": cache.hits,
                        "misses": cache.misses}  # fmt: skip
    if service.cold is not None:
        cold = service.cold
        out["cold_fallback"] = {"policy": cold.policy, "model": cold.fallback.model_name,
                                "served": cold.served}  # fmt: skip
    return out


@router.get("/status")
async def status(service: Service) -> dict[str, Any]:
    return await _status(service)


@router.post("/warmup", status_code=HTTPStatus.ACCEPTED, responses=errors(404))
async def warmup(service: Service, model: str | None = None) -> dict[str, Any]:
    """Start a model's engine (``?model=``; default: the default model) and return at once."""
    served = service.check_model(model)
    st = await served.transport.warmup()
    return {"model": served.name, **st.to_dict()}


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(require_admin)])
async def metrics(service: Service) -> Response:
    await _status(service)  # refreshes the queue and cold-start gauges
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")
