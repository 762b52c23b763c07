"""The service's own routes: ``/status``, ``/warmup`` (any key), ``/metrics`` (an admin key:
it names every key).

``/status`` and ``/metrics`` never wake the engine; ``/warmup`` starts it and returns at once,
and counts as a request under the caller's limits (its rpm, its budget): waking the GPU costs.

A key that is not an admin's sees, of ``/status`` and ``/warmup``, what a client needs to
decide when to call: each engine's state, queue depth, requests in flight, cold starts and
scale-down window, and the cold fallback's policy and model. Engine internals (process id,
URL, last error and when, failed starts, next start, warm schedule, GPU containers and
backlog: any transport's ``extra``), when the engine last served anyone, the response
cache's counters, the fallback's count and the state store's health are the admin's.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response

from ...gateway import Gateway, KeyRecord
from ...settings.deployment import read_deployment
from ..auth import Caller, require_admin, require_api_key
from ..responses import AUTH_ERRORS, errors
from ..serving.progress import boot_report
from ..serving.service import Service, Serving

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(require_api_key)], responses=AUTH_ERRORS)

# An engine's status as any key sees it (``EngineStatus`` fields; not its ``extra``).
_PUBLIC_STATUS = frozenset(
    {"model", "state", "queue_depth", "in_flight", "cold_starts", "scaledown_window", "boot"}
)
_PUBLIC_FALLBACK = frozenset({"policy", "model"})


def count_request(request: Request, caller: KeyRecord) -> None:
    """Take one request from the caller's limits (and check its budget), for a route that
    costs without generating: ``LimitExceeded`` (a 429 with Retry-After) when over."""
    gateway: Gateway = request.app.state.gateway
    gateway.admit(caller, [{"max_tokens": 1}]).settle(0)  # holds no tokens, no stream


def _public(status: dict[str, Any]) -> dict[str, Any]:
    """``status`` as a key that is not an admin's sees it."""
    out = {k: v for k, v in status.items() if k in _PUBLIC_STATUS}
    if "models" in status:
        out["models"] = {name: _public(st) for name, st in status["models"].items()}
    if "cold_fallback" in status:
        fallback = status["cold_fallback"]
        out["cold_fallback"] = {k: v for k, v in fallback.items() if k in _PUBLIC_FALLBACK}
    return out


async def _status(service: Serving) -> dict[str, Any]:
    st = await service.transport.status()
    service.metrics.queue_depth.set(st.queue_depth)
    service.metrics.cold_starts.set(st.cold_starts)
    gateway = service.gateway
    out = {"model": service.model_name, **st.to_dict(),
           "boot": boot_report(st, gateway, service.model_name)}  # fmt: skip
    if len(service.models) > 1:  # the default model above; every model, each on its own
        out["models"] = {}
        for name, served in service.models.models.items():
            each = await served.transport.status()
            out["models"][name] = {**each.to_dict(), "boot": boot_report(each, gateway, name)}
    cache = service.gateway.cache
    if cache is not None:  # this wrapper's own (the cache is per process)
        out["cache"] = {"entries": len(cache), "bytes": cache.bytes, "hits": cache.hits,
                        "misses": cache.misses}  # fmt: skip
    # The gateway's store: whether it answers, failures by operation, open or closed.
    out["state_store"] = service.gateway.store_status()
    # The GPU's up-time and cost today and this month, per model (as of the last sync).
    gpu = service.gateway.gpu_cached()
    service.metrics.set_gpu(gpu)
    out["gpu"] = gpu
    if service.cold is not None:
        cold = service.cold
        out["cold_fallback"] = {"policy": cold.policy, "model": cold.fallback.model_name,
                                "served": cold.served}  # fmt: skip
    return out


@router.get("/status")
async def status(service: Service, caller: Caller) -> dict[str, Any]:
    """Each engine's state, without waking it (an admin key sees every detail)."""
    out = await _status(service)
    if not caller.is_admin:
        return _public(out)
    # What was deployed: version, commit, settings hash, time (None on a local stack).
    return {**out, "deployment": read_deployment()}


@router.post("/warmup", status_code=HTTPStatus.ACCEPTED, responses=errors(404, 429))
async def warmup(
    request: Request, service: Service, caller: Caller, model: str | None = None
) -> dict[str, Any]:
    """Start a model's engine (``?model=``; default: the default model) and return at once.
    Counts as a request under the caller's limits."""
    served = service.check_model(model)
    count_request(request, caller)
    st = await served.transport.warmup()
    out = {"model": served.name, **st.to_dict()}
    return out if caller.is_admin else _public(out)


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(require_admin)])
async def metrics(service: Service) -> Response:
    await _status(service)  # refreshes the queue and cold-start gauges
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")
