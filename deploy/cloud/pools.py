"""The served models' pools of GPU containers on Modal, as ``deploy/modal_app.py`` declares them.

One Modal class, ``VLLMInference``, serves every model of ``VLLM_MODELS``: each model's pool is
that class with the model's own options, bound to the model by its ``model`` parameter,

    VLLMInference.with_options(gpu=..., scaledown_window=..., max_containers=..., volumes=...)
                 .with_concurrency(max_inputs=..., target_inputs=...)(model="<served name>")

and Modal runs each set of parameters and options as a function of its own, with its own
containers and autoscaler ("each unique combination of arguments will behave like an
individual Modal Function with its own auto-scaling and lifecycle logic", modal.com/docs/guide/
parametrized-functions; ``Cls.with_options``: "a new variant of the Cls that will autoscale
independently of the base configuration"). The pool is created on Modal at its first call (or
``update_autoscaler``) and found again by the same parameters and options.

What ``with_options`` cannot set stays on the class, the same for every model: memory and GPU
snapshots (``enable_memory_snapshot``, ``experimental_options``), ``min_containers`` (the
class's value, changed per pool at run time with ``update_autoscaler``), ``startup_timeout``,
the image, the secrets and the methods. Those settings are service-wide (``VLLM_*``, not per
model in ``VLLM_MODELS``); ``check_class_wide`` refuses a list of models that differs on them.

This module runs in the wrapper (the transport's handle on a pool) and in the GPU container
(``served_model``, ``see_latest``); it imports neither the engine nor the wrapper.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..settings.settings import Settings

__all__ = [
    "ADAPTER_METHODS",
    "CLASS_WIDE",
    "PoolHandle",
    "WithoutAdapters",
    "check_class_wide",
    "see_latest",
    "served_model",
    "stats_of",
]

ADAPTER_METHODS = ("load_adapter", "unload_adapter")
"""The GPU class's methods that only a model with LoRA on may be called with."""

CLASS_WIDE = ("gpu_snapshot", "mode", "startup_timeout")
"""Settings Modal takes on the class only (not through ``with_options``): every model's the
same."""


def check_class_wide(models: list[Settings]) -> None:
    """Refuse served models that differ on a setting only the class can carry."""
    for field in CLASS_WIDE:
        values = {getattr(m, field) for m in models}
        if len(values) > 1:
            raise ValueError(
                f"every served model must have the same {field} (one Modal class serves them "
                f"all, and Modal sets it on the class only): got {sorted(map(str, values))}"
            )


def served_model(models: list[Settings], name: str) -> Settings:
    """The settings of the model a pool is bound to (its ``model`` parameter)."""
    for model in models:
        if model.name == name:
            return model
    served = ", ".join(m.name for m in models)
    raise LookupError(f"this deploy serves no model {name!r} (it serves: {served})")


class WithoutAdapters:
    """A pool seen without its adapter methods: every call passes through, and asking for
    ``load_adapter`` or ``unload_adapter`` finds nothing."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        if name in ADAPTER_METHODS:
            raise AttributeError(name)
        return getattr(self._pool, name)


@dataclass(frozen=True)
class PoolHandle:
    """What ``ModalTransport`` reaches one model's pool through: called (once), it gives the
    instance whose methods the transport calls. The class has every model's methods; for a
    model that runs without LoRA the adapter methods are hidden, so that the transport answers
    400 ("deployed without LoRA adapters") itself instead of waking a GPU whose vLLM would
    refuse the adapter."""

    pool: Any
    adapters: bool

    def __call__(self) -> Any:
        return self.pool if self.adapters else WithoutAdapters(self.pool)


def stats_of(pool: Any) -> Callable[[], Awaitable[Any]]:
    """The pool's live container counts (Modal's ``FunctionCurrentStats``), asked without
    calling, or waking, the pool."""

    async def stats() -> Any:
        return await pool.chat.get_current_stats.aio()

    return stats


async def see_latest(volume: Any) -> None:
    """Reload a Volume mounted in this container so that it shows files committed since it
    started (a failure leaves the files as they were seen)."""
    try:
        await volume.reload.aio()
    except Exception as exc:  # a busy Volume: the adapter may be there already
        logging.getLogger("vllm_autoscale.modal").warning("models Volume not reloaded: %s", exc)
