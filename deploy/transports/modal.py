"""The transport the wrapper uses on Modal: function calls to one served model's GPU class
(its pool: ``VLLMInference`` with the model's options, see ``deploy/cloud/pools.py``).

The GPU class's methods run ``deploy.engine.server.InferenceServer`` inside the container and
answer with ``Reply`` objects (``deploy/core/contract.py``) that say which container served them;
this side only makes the calls (``.remote.aio``, ``.remote_gen.aio``), settles each reply's
facts (a container it has not seen, booted after the call was sent: a cold start), and keeps
what the wrapper reports without waking a GPU: the class's container counts from Modal's
stats, its own count of requests in flight, the last request time and the cold starts seen.

LoRA adapters at run time (``load_adapter`` / ``unload_adapter``) are one call to the class
too: with several GPU containers up, only the one that gets the call loads (or unloads) the
adapter, and a container started later serves only the adapters declared in the settings
(``VLLM_MODELS``' ``adapters``), which every container loads at start. Declare the adapters
every container must serve; load at run time to try one out on a single container.

It imports no engine code: the wrapper's container has no vLLM, aiohttp or subprocess use.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..core.contract import BatchResults, EngineState, EngineStatus, Facts, Reply
from ..core.errors import EngineError, EngineRequestError, EngineUnavailable
from ..core.logs import wake_cause

__all__ = ["ModalTransport"]

log = logging.getLogger("vllm_autoscale.engine")


class ModalTransport:
    """``EngineTransport`` over a Modal class handle (``modal.Cls`` or a stand-in for it)."""

    def __init__(
        self,
        inference_cls: Any,
        *,
        model_name: str,
        scaledown_window: float,
        stats: Any = None,
        max_containers: int | None = None,
        schedule: Any = None,
    ) -> None:
        self._cls = inference_cls
        self.schedule = schedule or None
        """The warm schedule (``WarmSchedule``), reported on ``/status``; Modal applies it
        through the app's scheduled function."""
        self._obj: Any = None
        self.model_name = model_name
        self.scaledown_window = scaledown_window
        self._stats = stats
        """Async callable returning Modal's ``FunctionCurrentStats`` for the class (backlog,
        ``num_total_runners``, ``num_running_inputs``); asking wakes no GPU."""
        self.max_containers = max_containers
        self._seen_containers: set[str] = set()
        self._in_flight = 0
        self.cold_starts = 0
        self.last_request_at: float | None = None
        self._last_done = 0.0
        self.last_error: str | None = None

    @property
    def _instance(self) -> Any:
        if self._obj is None:
            self._obj = self._cls()
        return self._obj

    def _settle(self, facts: Facts | None, sent_at: float) -> None:
        if facts is None:  # an engine side that says nothing: no cold start is claimed
            return
        if facts.settle(sent_at, self._seen_containers).cold_start:
            self.cold_starts += 1
            boot = (facts.booted_at or 0.0) - (facts.up_since or facts.booted_at or 0.0)
            # Modal started the container; the wrapper tells the story it can see.
            log.info("a GPU container of %s started for %s: serving after %.1f s of boot, "
                     "%.1f s after the call", self.model_name, wake_cause.get() or "a call",
                     boot, facts.queue_wait_s,
                     extra={"event": "engine_warm", "model": self.model_name,
                            "container": facts.container, "boot_s": round(boot, 2),
                            "cause": wake_cause.get()})  # fmt: skip

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        self._in_flight += 1
        self.last_request_at = time.time()
        try:
            yield
        except EngineError as exc:
            self.last_error = exc.message
            raise
        except Exception as exc:  # a Modal-side failure (container crash, time-out)
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise EngineUnavailable(f"the GPU function failed: {self.last_error}") from exc
        finally:
            self._in_flight -= 1
            self._last_done = time.monotonic()

    async def chat(self, body: dict[str, Any]) -> Reply[dict[str, Any]]:
        sent_at = time.time()
        async with self._call():
            reply: Reply[dict[str, Any]] = await self._instance.chat.remote.aio(body)
        self._settle(reply.facts, sent_at)
        return reply

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[Reply[dict[str, Any]]]:
        sent_at = time.time()
        async with self._call():
            async for part in self._instance.stream.remote_gen.aio(body):
                if part.facts is not None:
                    self._settle(part.facts, sent_at)
                yield part

    async def batch(
        self, bodies: Sequence[dict[str, Any]], max_concurrency: int | None = None
    ) -> Reply[BatchResults]:
        sent_at = time.time()
        async with self._call():
            reply: Reply[BatchResults] = await self._instance.batch.remote.aio(
                list(bodies), max_concurrency
            )
        self._settle(reply.facts, sent_at)
        return reply

    # -- LoRA adapters (``AdapterHost``) ---------------------------------------------------------

    def adapters(self) -> dict[str, str]:
        """None besides the settings' (every container loads those at start): a run-time load
        reaches one container, which this side does not track."""
        return {}

    async def load_adapter(self, name: str, path: str) -> dict[str, Any]:
        """Load a LoRA adapter on one GPU container of the class (booting one if none is up):
        ``path`` is a Hub repo id (downloaded there) or a path on a mounted Volume. Only that
        container serves it (see the module's note)."""
        method = self._adapter_method("load_adapter")
        async with self._call():
            return await method.remote.aio(name, path)  # type: ignore[no-any-return]

    async def unload_adapter(self, name: str) -> dict[str, Any]:
        """Unload a LoRA adapter from one GPU container of the class (the one that gets the
        call: with several up, the others keep serving it)."""
        method = self._adapter_method("unload_adapter")
        async with self._call():
            return await method.remote.aio(name)  # type: ignore[no-any-return]

    def _adapter_method(self, name: str) -> Any:
        method = getattr(self._instance, name, None)
        if method is None:  # the class of a model deployed without adapters has none
            raise EngineRequestError(
                f"the model {self.model_name} was deployed without LoRA adapters: declare "
                "some in VLLM_MODELS to load others at run time",
                status_code=400,
                param="base",
            )
        return method

    async def _current_stats(self) -> dict[str, int] | None:
        if self._stats is None:
            return None
        with contextlib.suppress(Exception):  # stats are a nicety; never fail /status on them
            stats = await self._stats()
            return {
                "containers": int(stats.num_total_runners),
                "running_inputs": int(getattr(stats, "num_running_inputs", 0)),
                "backlog": int(getattr(stats, "backlog", 0)),
            }
        return None

    async def status(self) -> EngineStatus:
        stats = await self._current_stats()
        containers = stats["containers"] if stats else None
        state: EngineState
        if containers is not None:
            state = "warm" if containers > 0 else ("starting" if self._in_flight else "cold")
        elif self._in_flight:
            state = "warm"
        else:
            state = self.state_hint()
        return EngineStatus(
            state=state,
            queue_depth=self._in_flight if state == "starting" else 0,
            in_flight=self._in_flight,
            cold_starts=self.cold_starts,
            scaledown_window=self.scaledown_window,
            last_request_at=self.last_request_at,
            last_error=self.last_error,
            extra={
                "gpu_containers": containers,
                "gpu_containers_max": self.max_containers,
                "gpu_backlog": stats["backlog"] if stats else None,
                "gpu_running_inputs": stats["running_inputs"] if stats else None,
                **(
                    {"warm_schedule": self.schedule.describe(time.time())}
                    if self.schedule is not None
                    else {}
                ),
            },
        )

    def state_hint(self) -> EngineState:
        """From this wrapper's own calls, no Modal call: warm until a scaledown window has
        passed since the last one finished; starting while calls wait and none has finished
        in that window (a cold start)."""
        recent = self._last_done and time.monotonic() - self._last_done < self.scaledown_window
        if recent:
            return "warm"
        return "starting" if self._in_flight else "cold"

    async def warmup(self) -> EngineStatus:
        # Spawn returns at once; the call itself boots a container if none is up.
        await self._instance.status.spawn.aio()
        return await self.status()

    async def aclose(self) -> None:
        return None
