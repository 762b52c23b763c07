"""Scaling: when GPU containers start and stop (mode, window, bounds, warm schedule), what
serves requests while the engine is cold (the fallback), and how the service shuts down."""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from ..core.schedule import WarmSchedule
from .constants import MINUTES

__all__ = ["ScalingPart"]


class ScalingPart(BaseModel):
    """The scaling settings of ``Settings`` (each field is the env var ``VLLM_<FIELD>``)."""

    mode: Literal["autoscale", "integrated"] = "autoscale"
    """"integrated" keeps one GPU container warm (the seed's always-on alternative)."""
    scaledown_window: int = Field(default=2 * MINUTES, ge=2, le=3600)
    """Idle seconds before the GPU is released: 60-120 for rare use, 300-600 for frequent."""
    max_containers: int = Field(default=1, ge=1, le=100)
    """Upper bound on GPU containers (each is one A100: this is the cost ceiling)."""
    target_inputs: int | None = Field(default=None, ge=1)
    """Requests per GPU container Modal aims for before it starts another (up to
    ``max_containers``); default 3/4 of ``max_num_seqs``, so a second GPU boots before the
    first saturates."""
    startup_timeout: int = Field(default=20 * MINUTES, ge=60)
    """Time a GPU container may take to start; the first start downloads the weights."""
    warm_schedule: str | None = None
    """Windows in which one GPU container stays warm, scaled to zero outside them:
    ``CRON LENGTH [ZONE]`` separated by ``;``, e.g. "0 9 * * mon-fri 9h Europe/Paris"
    (deploy/core/schedule.py)."""
    cold_fallback_url: str | None = None
    """An OpenAI-compatible endpoint (its ``/v1`` root) that serves requests arriving while
    the engine is cold or starting; the engine is woken meanwhile
    (deploy/transports/fallback.py)."""
    cold_fallback_api_key: SecretStr | None = None
    """The fallback's bearer key (a secret: the Modal Secret or the environment)."""
    cold_fallback_model: str | None = None
    """The model name sent to the fallback (None: the request's own)."""
    cold_fallback_policy: Literal["always", "header", "after"] = "always"
    """Which cold-time requests go to the fallback: all; those with
    ``X-Allow-Fallback: true``; or those still waiting after ``cold_fallback_after``."""
    cold_fallback_after: float = Field(default=10.0, ge=0, le=600)
    """Seconds a request waits for the engine before the ``after`` policy falls back."""
    gpu_snapshot: bool = False
    """Use Modal's GPU memory snapshots to cut cold starts (experimental on Modal)."""
    drain_grace: float = Field(default=20.0, ge=0, le=600)
    """On shutdown (SIGTERM locally, container stop on Modal): seconds in-flight requests
    get to finish; streams still open then end with an error event and [DONE]."""

    @cached_property
    def schedule(self) -> WarmSchedule:
        """The parsed ``warm_schedule`` (empty: no windows)."""
        return WarmSchedule.parse(self.warm_schedule)

    # A check ``Settings``' validator runs (in its order, which decides the error reported).
    def _check_warm_schedule(self) -> None:
        if self.warm_schedule:
            try:
                WarmSchedule.parse(self.warm_schedule)
            except ValueError as exc:
                raise ValueError(f"VLLM_WARM_SCHEDULE: {exc}") from None
