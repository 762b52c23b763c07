"""``GET /v1/gpu`` (admin): the GPU's up-time and what it cost, per model, and its containers'
lives (up, serving, stopped) over the last days: what the bill is made of
(``deploy/gateway/allocation.py``)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Query, Request

from ...gateway import Gateway
from ...gateway.gateway import month_start
from ..auth import Admin
from ..responses import ADMIN_ERRORS, errors
from .gateway import _store_down

__all__ = ["router"]

router = APIRouter(responses=ADMIN_ERRORS)


@router.get("/v1/gpu", responses=errors(422, 503))
async def gpu(
    request: Request,
    _: Admin,
    days: float = Query(1.0, gt=0, le=62, description="How many days of container lives"),
) -> dict[str, Any]:
    """Per model: its state now, its GPU up-time today and this month (UTC) split into
    busy, boot and idle, what it cost, what went to keys, and always-on for comparison;
    and every container life of the last ``days`` days."""
    gateway: Gateway = request.app.state.gateway
    now = gateway.clock()
    since = min(month_start(now), now - days * 86400)

    def read() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        gateway.keep_books()
        with contextlib.suppress(Exception):  # shown as stored if this write fails
            gateway.uptime.flush(gateway.store)
        lives = gateway.lives(since)
        recent = [life.public() for life in lives if life.end >= now - days * 86400]
        return gateway.gpu_summary(lives, now), recent

    try:
        summary, lives = await asyncio.to_thread(read)
    except Exception as exc:
        raise _store_down(gateway, "read uptime", exc) from None
    for name, served in request.app.state.models.models.items():
        state = (await served.transport.status()).state
        summary[name]["state"] = state  # every served model has a price: it is in the summary
    return {
        "object": "gpu.usage",
        "now": round(now, 3),
        "policy": gateway.settings.gpu_cost_allocation,
        "models": summary,
        "lives": lives,
    }
