"""What an answer reports of its call: the metadata, its headers, and what the call cost.

Every answer carries its call's ``Meta`` (``vllm_autoscale`` in the JSON, ``metadata`` on the
seed's ``/chat``) and the same facts as ``x-*`` headers: the request id, whether it waited for
a cold start, the queue wait, the engine's time, where it was served from, and its cost at
the served model's GPU price.
"""

from __future__ import annotations

import time
from typing import Any, TypedDict

from fastapi import Request

from ...core.contract import Facts
from ...core.pricing import request_cost
from ...settings.settings import Settings

__all__ = ["SSE_HEADERS", "Meta", "call_meta", "hit_meta", "meta_headers", "scaled",
           "stream_headers"]  # fmt: skip

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class Meta(TypedDict):
    """One call's facts, as its answer reports them."""

    cache: str
    """``hit``, ``miss`` (stored for next time) or ``bypass``."""
    served_by: str
    """``engine``, ``fallback`` (the cold fallback) or ``cache``."""
    request_id: str
    cold_start: bool
    queue_wait_ms: float
    engine_ms: float
    cost: dict[str, float]
    """``request_cost``'s: GPU seconds, dollars, and the cold start's share of them."""


def call_meta(
    request: Request,
    facts: Facts,
    started: float,
    settings: Settings,
    cache: str = "bypass",
    served_by: str = "engine",
    ended: float | None = None,
) -> Meta:
    """What the answer reports of its call; ``settings``: the served model's (its price);
    ``ended``: when the engine's part ended (``perf_counter``; default: now)."""
    engine_s = (time.perf_counter() if ended is None else ended) - started - facts.queue_wait_s
    # At the configured GPU price: what this request would cost on the GPU tier (the
    # fallback's own price is not known here).
    gpu_s = engine_s if served_by == "engine" else 0.0
    return {
        "cache": cache,
        "served_by": served_by,
        "request_id": request.state.request_id,
        "cold_start": facts.cold_start,
        "queue_wait_ms": round(facts.queue_wait_s * 1000, 1),
        "engine_ms": round(engine_s * 1000, 1),
        "cost": request_cost(
            gpu_s,
            facts.queue_wait_s if facts.cold_start else 0.0,
            settings.gpu_price_per_hour,
            settings.gpu_count,
        ),
    }


def hit_meta(request: Request) -> Meta:
    """A cache hit's metadata: no engine, no GPU time, no cost."""
    return {"cache": "hit", "served_by": "cache", "request_id": request.state.request_id,
            "cold_start": False,
            "queue_wait_ms": 0.0, "engine_ms": 0.0,
            "cost": {"gpu_seconds": 0.0, "usd": 0.0, "cold_start_usd": 0.0}}  # fmt: skip


def meta_headers(meta: Meta) -> dict[str, str]:
    """A plain answer's headers: its meta, for clients that read no body."""
    return {
        "x-cold-start": str(meta["cold_start"]).lower(),
        "x-queue-wait-ms": str(meta["queue_wait_ms"]),
        "x-engine-ms": str(meta["engine_ms"]),
        "x-cache": meta["cache"],
        "x-served-by": meta["served_by"],
    }


def stream_headers(cold: bool, cache: str, served_by: str) -> dict[str, str]:
    """A stream's headers: what is known before its first chunk goes out."""
    return {**SSE_HEADERS, "x-cold-start": str(cold).lower(), "x-cache": cache,
            "x-served-by": served_by}  # fmt: skip


def scaled(meta: Meta, share: float) -> dict[str, Any]:
    """``meta`` with its cost (GPU seconds and dollars) multiplied by ``share``."""
    cost = {k: v * share for k, v in (meta.get("cost") or {}).items()}
    return {**meta, "cost": cost}
