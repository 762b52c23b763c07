"""The transport the wrapper uses on Modal: function calls to the ``VLLMInference`` GPU class.

The GPU class's methods run ``deploy.engine.VLLMEngine`` inside the container; this side only
makes the calls (``.remote.aio``, ``.remote_gen.aio``) and keeps what the wrapper reports
without waking a GPU: the class's container count from Modal's stats, its own count of
requests in flight, the last request time and the cold starts it has seen (a reply from a
container it has not seen before).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from deploy.errors import EngineError, EngineUnavailable
from deploy.transport import EngineState, EngineStatus, RequestInfo

__all__ = ["CONTAINER_KEY", "ModalTransport"]

CONTAINER_KEY = "_vllm_autoscale_container"
"""Field the GPU class adds to each reply: which container served it and how long it took."""


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
    ) -> None:
        self._cls = inference_cls
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

    def _note_reply(
        self, container: dict[str, Any] | None, info: RequestInfo, started: float
    ) -> None:
        """Cold start and queue wait, from the container facts the GPU side attached."""
        if not container:
            return
        if container["id"] not in self._seen_containers:
            self._seen_containers.add(container["id"])
            # Booted after this request was sent: the request waited for it.
            if container["booted_at"] >= time.time() - (time.monotonic() - started):
                info.cold_start = True
                self.cold_starts += 1
        engine_s = container.get("engine_s", 0.0)
        info.queue_wait_s = max(0.0, time.monotonic() - started - engine_s)

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

    async def chat(self, body: dict[str, Any], info: RequestInfo) -> dict[str, Any]:
        started = time.monotonic()
        async with self._call():
            reply = await self._instance.chat.remote.aio(body)
        self._note_reply(reply.pop(CONTAINER_KEY, None), info, started)
        return reply

    async def stream(
        self, body: dict[str, Any], info: RequestInfo
    ) -> AsyncIterator[dict[str, Any]]:
        started = time.monotonic()
        async with self._call():
            async for chunk in self._instance.stream.remote_gen.aio(body):
                container = chunk.pop(CONTAINER_KEY, None)
                if container is not None:  # the first item only says who serves the stream
                    self._note_reply(container, info, started)
                    continue
                yield chunk

    async def batch(
        self,
        bodies: Sequence[dict[str, Any]],
        info: RequestInfo,
        max_concurrency: int | None = None,
    ) -> list[dict[str, Any] | EngineError]:
        started = time.monotonic()
        async with self._call():
            reply = await self._instance.batch.remote.aio(list(bodies), max_concurrency)
        self._note_reply(reply["container"], info, started)
        return reply["results"]

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
        idle = time.monotonic() - self._last_done
        state: EngineState
        if containers is not None:
            state = "warm" if containers > 0 else ("starting" if self._in_flight else "cold")
        elif self._in_flight:
            state = "warm"
        else:  # without stats: warm until a scaledown window has passed since the last call
            state = "warm" if self._last_done and idle < self.scaledown_window else "cold"
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
            },
        )

    async def warmup(self) -> EngineStatus:
        # Spawn returns at once; the call itself boots a container if none is up.
        await self._instance.status.spawn.aio()
        return await self.status()

    async def aclose(self) -> None:
        return None
