"""The dashboard, ``GET /dashboard``: one page of the GPU's state, up-time, spend and usage for
an admin; and the window advisor over the recorded traffic, ``GET /v1/gpu/advice`` (admin).

The page is three static files shipped in the package (``wrapper/dashboard/``) and holds no
figure: its script asks for an admin key, keeps it in ``sessionStorage`` and reads the JSON
routes (``/status``, ``/v1/keys``, ``/v1/usage``, ``/v1/gpu``, ``/v1/gpu/advice``) with
``Authorization: Bearer``. So the page and its two assets need no key and answer the same
bytes to anyone (a browser's navigation sends no bearer header, and one sent is ignored);
every figure comes from routes that check the key. They are left out of the OpenAPI schema
and served under a strict Content-Security-Policy: same-origin script, style and fetches,
no inline script or style, no form submission, no framing.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from statistics import median
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from ...core.advisor import (
    DAY,
    DEFAULT_MAX_WAIT_SHARE,
    DEFAULT_WINDOWS,
    CostInputs,
    Row,
    Trace,
    recommend,
    sweep,
)
from ...core.schedule import WarmSchedule
from ...core.warm_candidates import derive_schedules
from ...gateway import Gateway
from ..auth import Admin
from ..responses import ADMIN_ERRORS, errors
from ..serving.registry import ServedModel
from ..serving.service import Service
from .gateway import _store_down

__all__ = ["ASSETS", "HEADERS", "router"]

_FILES = Path(__file__).resolve().parent.parent / "dashboard"
ASSETS: dict[str, tuple[bytes, str]] = {
    name: ((_FILES / name).read_bytes(), media_type)
    for name, media_type in (
        ("index.html", "text/html; charset=utf-8"),
        ("dashboard.js", "text/javascript; charset=utf-8"),
        ("dashboard.css", "text/css; charset=utf-8"),
    )
}
"""File name -> (its bytes, its media type); read once: a file missing fails at import."""

CSP = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",  # the key form never submits (without its script: not the key)
    "frame-ancestors 'none'",
))  # fmt: skip
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
DEFAULT_BOOT_SECONDS = CostInputs(0.0).boot_seconds
"""The boot the advisor assumes while no boot was recorded."""
MIN_SPAN_S = 60.0
"""Less traffic than this is not scaled to a month."""

router = APIRouter()


def _asset(name: str) -> Response:
    body, media_type = ASSETS[name]
    return Response(body, media_type=media_type, headers=HEADERS)


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> Response:
    return _asset("index.html")


@router.get("/dashboard/dashboard.js", include_in_schema=False)
async def dashboard_js() -> Response:
    return _asset("dashboard.js")


@router.get("/dashboard/dashboard.css", include_in_schema=False)
async def dashboard_css() -> Response:
    return _asset("dashboard.css")


# -- the advisor over recorded traffic ---------------------------------------------------------


def _row(row: Row) -> dict[str, Any]:
    data = row.to_dict()
    data["monthly_usd"] = data.pop("monthly")
    return data


def advice(
    arrivals: list[float],
    boots: list[float],
    recorded_from: float | None,
    served: ServedModel,
    window: float | None,
    since: float,
    now: float,
    max_wait_share: float,
) -> dict[str, Any]:
    """The advisor's answer for ``served``'s recorded ``arrivals`` since ``since``: the
    cheapest setting within the wait budget, the current one (``window``, as its engine
    runs; None: kept up, which is always on) and always on. The trace runs to now from
    ``since``, or from when recording began if later (``recorded_from``: the first container
    life recorded; days before it are not known to be quiet). ``boots`` are the recorded
    boots' seconds: their median is the boot replayed."""
    settings = served.settings
    boot = median(boots) if boots else DEFAULT_BOOT_SECONDS
    out: dict[str, Any] = {
        "object": "gpu.advice",
        "model": served.name,
        "since": round(since, 3),
        "now": round(now, 3),
        "requests": len(arrivals),
        "boot_seconds": round(boot, 3),
        "boots_recorded": len(boots),
        "price_per_hour_usd": settings.gpu_price_per_hour * settings.gpu_count,
        "max_wait_share": max_wait_share,
        "current": {"scaledown_window": window, "warm_schedule": settings.warm_schedule},
        "recommended": None,
        "always_on": None,
    }
    if not arrivals:
        return {**out, "reason": "no request recorded in this span: nothing to replay"}
    first = arrivals[0] if recorded_from is None else min(arrivals[0], recorded_from)
    start = max(since, first)
    out["span_s"] = round(now - start, 3)
    if now - start < MIN_SPAN_S:
        return {**out, "reason": f"less than {MIN_SPAN_S:g} s of traffic recorded: too "
                                 "little to scale to a month"}  # fmt: skip
    trace = Trace(tuple(arrivals), start, now, served.name)
    inputs = CostInputs(settings.gpu_price_per_hour, settings.gpu_count, boot_seconds=boot)
    deployed = [settings.warm_schedule] if settings.warm_schedule else []
    # The schedules the traffic suggests (core/warm_candidates.py), beside the deployed one.
    derived = [c.schedule for c in derive_schedules(trace) if c.schedule not in deployed]
    windows = {*DEFAULT_WINDOWS, *([] if window is None else [float(window)])}
    rows = sweep(trace, inputs, sorted(windows), deployed + derived)
    best = recommend(rows, max_wait_share)
    always_on = next(r for r in rows if r.window is None)
    # A row names its schedule as its windows, one "; " apart: the deployed one, so written.
    deployed_text = (
        "; ".join(str(w) for w in WarmSchedule.parse(settings.warm_schedule).windows)
        if settings.warm_schedule else None
    )  # fmt: skip
    current = next(
        (r for r in rows if r.window == window and r.schedule == deployed_text), always_on
    )
    out["schedules_derived"] = derived
    out["current"] |= _row(current)
    out.update(recommended={**_row(best.row), "fits": best.fits}, always_on=_row(always_on),
               reason=best.reason)  # fmt: skip
    return out


def _recorded(
    gateway: Gateway, model: str, since: float
) -> tuple[list[float], list[float], float | None]:
    """``model``'s arrivals since ``since``, its recorded boots' seconds and when its first
    recorded container life began. Blocking: reads the store."""
    gateway.keep_books()  # as GET /v1/gpu: the answers already sent are in the meter
    with contextlib.suppress(Exception):  # the store's records are read all the same
        gateway.uptime.flush(gateway.store)
    lives = [life for life in gateway.lives(since) if life.model == model]
    boots = [life.ready_at - life.up_since for life in lives
             if life.ready_at is not None and life.ready_at >= life.up_since]  # fmt: skip
    first = min((life.up_since for life in lives), default=None)
    return gateway.arrivals(model, since), boots, first


@router.get("/v1/gpu/advice", responses={**ADMIN_ERRORS, **errors(404, 422, 503)})
async def gpu_advice(
    request: Request,
    service: Service,
    _: Admin,
    model: str | None = Query(None, description="A served model (default: the default one)"),
    days: float = Query(7.0, gt=0, le=62, description="How many days of traffic to replay"),
    max_wait_share: float = Query(
        DEFAULT_MAX_WAIT_SHARE, ge=0, le=1, description="The share of requests that may wait"
    ),
) -> dict[str, Any]:
    """The window advisor (``vllm-autoscale cost --traffic``) over the request arrivals the
    GPU up-time meter recorded: the cheapest ``scaledown_window`` (and the model's warm
    schedule, if set) with at most ``max_wait_share`` of requests waiting for a boot, the
    current setting and always on; money is the GPU's, in USD a month."""
    served = service.check_model(model)
    window = (await served.transport.status()).scaledown_window  # as it runs; never wakes it
    gateway: Gateway = request.app.state.gateway
    now = gateway.clock()
    since = now - days * DAY
    try:
        recorded = await asyncio.to_thread(_recorded, gateway, served.name, since)
    except Exception as exc:  # the store: answered 503 naming it (never 500)
        raise _store_down(gateway, "read uptime", exc) from None
    return advice(*recorded, served, window, since, now, max_wait_share)
