"""What runs inside a GPU container: one engine and the calls the wrapper makes to it.

``deploy/modal_app.py``'s ``VLLMInference`` class is a thin Modal shell around
``InferenceServer``; keeping the logic here makes it importable and testable without Modal.
Each reply carries a small ``CONTAINER_KEY`` record (container id, boot time, engine seconds)
that the wrapper's ``ModalTransport`` strips and turns into cold-start and queue-wait facts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from deploy.engine import EngineConfig, VLLMEngine
from deploy.errors import EngineError
from deploy.transport_modal import CONTAINER_KEY

__all__ = ["InferenceServer"]


class InferenceServer:
    def __init__(self, config: EngineConfig) -> None:
        self.engine = VLLMEngine(config)
        self.container_id = uuid.uuid4().hex[:12]
        self.booted_at = time.time()
        self.served = 0

    def _container(self, engine_s: float) -> dict[str, Any]:
        return {"id": self.container_id, "booted_at": self.booted_at, "engine_s": engine_s}

    async def start(self) -> None:
        await self.engine.start()

    async def start_for_snapshot(self) -> None:
        """Start, then put vLLM to sleep: the snapshot then holds a booted engine."""
        await self.engine.start()
        await self.engine.sleep(level=1)

    async def wake_from_snapshot(self) -> None:
        await self.engine.wake_up()
        self.booted_at = time.time()

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        reply = await self.engine.chat(body)
        self.served += 1
        reply[CONTAINER_KEY] = self._container(time.monotonic() - started)
        return reply

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        yield {CONTAINER_KEY: self._container(0.0)}
        async for chunk in self.engine.stream(body):
            yield chunk
        self.served += 1

    async def batch(
        self, bodies: Sequence[dict[str, Any]], max_concurrency: int | None = None
    ) -> dict[str, Any]:
        started = time.monotonic()
        results: list[dict[str, Any] | EngineError] = await self.engine.batch(
            bodies, max_concurrency
        )
        self.served += len(bodies)
        return {"results": results, "container": self._container(time.monotonic() - started)}

    def status(self) -> dict[str, Any]:
        return {
            "container": self.container_id,
            "booted_at": self.booted_at,
            "served": self.served,
            "engine_running": self.engine.is_running(),
        }

    async def stop(self) -> None:
        await self.engine.aclose()
        self.engine.stop()
