"""The books of every answer: the ledger (by key and model), the usage metrics, the limits.

``Books`` writes what a call used, under the model (or adapter) the request named: an
engine's answer with its meta (GPU seconds, cost), a cache hit apart, a batch item by item.
The caller's limits are settled by whoever holds the admission (``Admission.settle``), with
the tokens ``tokens`` reads from the usage.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ...core.contract import Facts
from ...gateway import Gateway, KeyRecord
from ...gateway.gateway import Admission
from ..metrics import Metrics
from .accounting import split_by_model
from .meta import Meta, scaled

__all__ = ["Books", "sum_usage", "tokens"]


class Books:
    """One per app: the gateway's ledger and the metrics; ``default_model`` books a call
    whose body named no model."""

    def __init__(self, gateway: Gateway, metrics: Metrics, default_model: str) -> None:
        self.gateway, self.metrics, self.default_model = gateway, metrics, default_model

    def served(
        self,
        caller: KeyRecord,
        usage: dict[str, Any] | None,
        meta: Meta,
        model: str | None = None,
        estimated: bool = False,
        facts: Facts | None = None,
        engine_model: str | None = None,
        ended_at: float | None = None,
    ) -> None:
        """An answer the engine (or the cold fallback) served; ``facts`` and
        ``engine_model`` (the served model whose engine answered; None for the fallback)
        feed the GPU up-time meter."""
        self.gateway.record(caller, model or self.default_model, usage, meta, estimated=estimated)
        if engine_model is not None:
            self.gateway.uptime.served(engine_model, caller.name, facts, meta["engine_ms"] / 1000,
                                       ended_at=ended_at)  # fmt: skip
        self.metrics.count_usage(usage, caller.name)
        self.metrics.count_key(caller.name, "served")

    def hit(self, caller: KeyRecord, model: str | None, completion: dict[str, Any]) -> None:
        """A replay in the ledger, under the model (or adapter) the request named."""
        usage = completion.get("usage")
        self.gateway.record(caller, model or self.default_model, usage, cache_hit=True)
        self.metrics.count_key(caller.name, "cache_hit")

    def batch(
        self,
        caller: KeyRecord,
        ticket: Admission,
        bodies: Sequence[dict[str, Any]],
        answers: Sequence[dict[str, Any] | None],
        meta: Meta,
        model: str,
        facts: Facts | None = None,
    ) -> None:
        """A batch's answered items (None: a failed one): the caller's limits settled with
        their tokens, then each booked under the model or adapter it named, the call's cost
        shared by item (``model`` for the items that named none)."""
        served = [a for a in answers if a is not None]
        usage = sum_usage(r.get("usage") for r in served)
        ticket.settle(tokens(usage))
        for named, group in split_by_model(bodies, answers).items():
            share = scaled(meta, len(group) / len(served))
            group_usage = sum_usage(r.get("usage") for r in group)
            self.gateway.record(caller, named or model, group_usage, share, requests=len(group))
        if served:
            self.gateway.uptime.served(model, caller.name, facts, meta["engine_ms"] / 1000,
                                       requests=len(served))  # fmt: skip
        self.metrics.count_usage(usage, caller.name)
        for _ in served:
            self.metrics.count_key(caller.name, "served")


def tokens(usage: dict[str, Any] | None) -> int | None:
    """What a call used of the caller's token limits (None: unknown, give the hold back)."""
    return int(usage.get("total_tokens") or 0) if usage else None


def sum_usage(usages: Iterable[dict[str, Any] | None]) -> dict[str, int]:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for usage in usages:
        for name in total:
            total[name] += int((usage or {}).get(name) or 0)
    return total
