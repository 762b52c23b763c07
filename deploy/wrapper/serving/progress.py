"""A cold start's progress, as a stream shows it and ``/status`` reports it: the engine's
state, how long the boot has run, and an estimate of how long it has left (from the model's
recent boots, which the GPU up-time meter keeps in the state store for every wrapper)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from ...core.contract import EngineStatus
from ...gateway import Gateway

__all__ = ["OPEN_AFTER_S", "boot_report", "eta", "progress_event"]

OPEN_AFTER_S = 0.5
"""A stream still waiting for its engine this long sends its headers and a first progress
event: clients see the response start at once, cold or not."""
_BOOTS_FOR_ETA = 3  # the last few: a boot's time follows the machine's recent load


def eta(boots: list[float], elapsed: float) -> float | None:
    """Seconds a boot that has run ``elapsed`` seconds is expected to need still: the median
    of the last three boots, less what has passed (None before any boot was seen)."""
    if not boots:
        return None
    return round(max(0.0, statistics.median(boots[-_BOOTS_FOR_ETA:]) - elapsed), 1)


def _elapsed(status: EngineStatus, waited: float | None) -> float | None:
    since = status.extra.get("starting_since")
    if since is not None:
        return max(0.0, time.time() - float(since))
    return waited


def boot_report(status: EngineStatus, gateway: Gateway, model: str) -> dict[str, Any]:
    """``/status``'s ``boot``: the last boots' seconds and, while one runs, its elapsed
    seconds and estimate."""
    boots = gateway.boot_times(model)
    report: dict[str, Any] = {"last_boots_s": [round(b, 1) for b in boots[-_BOOTS_FOR_ETA:]]}
    if status.state == "starting":
        elapsed = _elapsed(status, None)
        report["elapsed_s"] = None if elapsed is None else round(elapsed, 1)
        report["eta_s"] = eta(boots, elapsed or 0.0)
    return report


def progress_event(
    status: EngineStatus, gateway: Gateway, model: str, waited: float
) -> dict[str, Any]:
    """One progress event of a stream that has waited ``waited`` seconds for its engine."""
    elapsed = _elapsed(status, waited) or 0.0
    return {
        "object": "vllm_autoscale.progress",
        "model": model,
        "state": status.state,
        "elapsed_s": round(elapsed, 1),
        "eta_s": eta(gateway.boot_times(model), elapsed),
        "queue_depth": status.queue_depth,
        "waited_s": round(waited, 1),
    }
