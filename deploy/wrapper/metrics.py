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
        # Per API key: labelled by the key's name, never by the key.
        self.key_requests = Counter(
            "vllm_autoscale_key_requests",
            "Requests by key name and outcome (served, cache_hit, or the limit that refused)",
            ["key", "outcome"], registry=r,
        )  # fmt: skip
        self.key_tokens = Counter(
            "vllm_autoscale_key_tokens", "Engine tokens by key name and direction",
            ["key", "direction"], registry=r,
        )  # fmt: skip
        self.store_errors = Counter(
            "vllm_autoscale_state_store_errors", "Failed state store calls by operation",
            ["op"], registry=r,
        )  # fmt: skip
        self._key_children: dict[tuple[str, str, str], Any] = {}
        # The GPU's up-time and what it cost, as the gateway allocates it (gpu_summary).
        self.gpu_seconds = Gauge(
            "vllm_autoscale_gpu_seconds",
            "GPU container up-time by model, period (today, month; UTC) and part (up, busy, "
            "boot, idle)", ["model", "period", "part"], registry=r,
        )  # fmt: skip
        self.gpu_cost = Gauge(
            "vllm_autoscale_gpu_cost_usd",
            "GPU cost by model, period and line (up: all of it; allocated: to keys; "
            "unallocated; always_on: the same period with the GPU always up)",
            ["model", "period", "line"], registry=r,
        )  # fmt: skip

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

    def count_usage(self, usage: dict | None, key: str | None = None) -> None:
        if usage:
            prompt, completion = (
                usage.get("prompt_tokens") or 0,
                usage.get("completion_tokens") or 0,
            )
            self.tokens.labels("in").inc(prompt)
            self.tokens.labels("out").inc(completion)
            if key is not None:
                self._key_child(self.key_tokens, key, "in").inc(prompt)
                self._key_child(self.key_tokens, key, "out").inc(completion)

    def count_key(self, key: str, outcome: str) -> None:
        self._key_child(self.key_requests, key, outcome).inc()

    def _key_child(self, metric: Any, key: str, label: str) -> Any:
        # A labelled child is looked up once per (metric, key, label): this runs per request.
        child = self._key_children.get((metric._name, key, label))
        if child is None:
            child = self._key_children[(metric._name, key, label)] = metric.labels(key, label)
        return child

    def count_store_error(self, op: str) -> None:
        """One failed state store call (from the gateway's sync thread; the client is
        thread-safe)."""
        self.store_errors.labels(op).inc()

    def set_gpu(self, summary: dict[str, dict[str, Any]]) -> None:
        """The gateway's ``gpu_summary``, as gauges."""
        for model, figures in summary.items():
            for period in ("today", "month"):
                f = figures[period]
                for part in ("up", "busy", "boot", "idle"):
                    self.gpu_seconds.labels(model, period, part).set(f[f"{part}_s"])
                self.gpu_cost.labels(model, period, "up").set(f["cost_usd"])
                self.gpu_cost.labels(model, period, "allocated").set(f["allocated_usd"])
                self.gpu_cost.labels(model, period, "unallocated").set(f["unallocated_usd"])
            self.gpu_cost.labels(model, "month", "always_on").set(figures["month"]["always_on_usd"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
