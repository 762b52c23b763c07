"""Prometheus metrics of the wrapper, on their own registry (one per app: tests build many)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self.requests = Counter(
            "vllm_autoscale_requests",
            "Requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "vllm_autoscale_request_seconds", "Request latency", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "vllm_autoscale_time_to_first_token_seconds", "Time to first streamed token",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "vllm_autoscale_tokens", "Tokens by direction", ["direction"], registry=r
        )
        self.queue_depth = Gauge(
            "vllm_autoscale_queue_depth", "Requests waiting for the engine", registry=r
        )
        self.cold_starts = Gauge("vllm_autoscale_cold_starts", "Engine starts so far", registry=r)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        # Label children are looked up once per (route, status): this runs on every request.
        key = (route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, str(status)),
                self.latency.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def count_usage(self, usage: dict | None) -> None:
        if usage:
            self.tokens.labels("in").inc(usage.get("prompt_tokens") or 0)
            self.tokens.labels("out").inc(usage.get("completion_tokens") or 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
