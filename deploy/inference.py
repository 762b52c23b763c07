"""What runs inside a GPU container: one engine and the calls the wrapper makes to it.

``deploy/modal_app.py``'s ``VLLMInference`` class is a thin Modal shell around
``InferenceServer``; keeping the logic here makes it importable and testable without Modal.
Each answer is a ``Reply`` (``deploy/contract.py``) whose facts say which container served
it, when that container began serving and how long the engine took; the wrapper's
``ModalTransport`` turns them into cold-start and queue-wait facts.

A container's life: fetch the weights (``HF_TOKEN`` stays in this process; vLLM gets a local
folder and no secret), start vLLM, serve. With GPU memory snapshots, the part before the
snapshot also sends a few warm-up requests and puts vLLM to sleep; each restored container
wakes it and only then takes its own id and boot time, so restored containers are told apart.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from .contract import BatchResults, Facts, Reply
from .engine import EngineConfig, VLLMEngine
from .errors import EngineStartError, EngineUnavailable

__all__ = ["InferenceServer", "fetch_weights"]

log = logging.getLogger("vllm_autoscale.inference")

# The Hub repos of instruct models also carry the original checkpoint (Llama 3.1 8B: another
# 16 GB in original/*.pth) and other formats; vLLM loads the safetensors.
_NOT_NEEDED = ["original/*", "*.pth", "*.pt", "*.bin", "*.gguf", "*.msgpack", "*.h5", "*.onnx"]
_WARMUP_BODY = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}


def fetch_weights(model: str, revision: str | None = None) -> str:
    """A local folder with the model's weights: ``model`` itself when it is one, else the Hub
    snapshot in the Hugging Face cache (a Volume on Modal), downloaded on the first start."""
    if Path(model).is_dir():
        return model
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    started = time.monotonic()
    try:
        path = snapshot_download(model, revision=revision, ignore_patterns=_NOT_NEEDED)
    except HfHubHTTPError as exc:
        raise EngineStartError(
            f"could not download {model} from Hugging Face ({exc}). A gated model needs "
            "HF_TOKEN in the vllm-secrets Modal Secret and its licence accepted on the Hub."
        ) from exc
    log.info("weights of %s ready in %.0f s at %s", model, time.monotonic() - started, path)
    return path


class InferenceServer:
    def __init__(
        self,
        config: EngineConfig,
        *,
        warmup_requests: int = 2,
        on_broken: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.config = config
        self.engine = VLLMEngine(config)
        self.on_broken = on_broken
        """Called once when the engine is found dead: on Modal, the container stops taking
        inputs and exits, and Modal starts a fresh one for the next request."""
        self.broken = False
        self.warmup_requests = warmup_requests
        """Requests sent before a snapshot, so that it holds warmed kernels and caches."""
        self.container_id = ""
        self.booted_at = 0.0
        self.served = 0

    def begin_serving(self) -> None:
        # Taken when this container starts serving: after a restore, not before the snapshot
        # (else every container restored from it would share one id and boot time).
        self.container_id = uuid.uuid4().hex[:12]
        self.booted_at = time.time()

    def _facts(self, started: float) -> Facts:
        return Facts(
            container=self.container_id,
            booted_at=self.booted_at,
            engine_s=time.monotonic() - started,
        )

    async def _start_engine(self) -> None:
        model = fetch_weights(self.config.model, self.config.revision)
        if model != self.config.model:  # vLLM loads the local folder and never calls the Hub
            self.engine.config = dataclasses.replace(self.config, model=model, revision=None)
        await self.engine.start()

    async def start(self) -> None:
        await self._start_engine()
        self.begin_serving()

    async def start_for_snapshot(self) -> None:
        """Start, warm up, then put vLLM to sleep: the snapshot holds a booted engine."""
        await self._start_engine()
        for _ in range(self.warmup_requests):
            await self.engine.chat(_WARMUP_BODY)
        await self.engine.sleep(level=1)
        # No pooled connection may cross the snapshot: the restored process reconnects.
        await self.engine.aclose()

    async def wake_from_snapshot(self) -> None:
        await self.engine.wake_up()
        self.begin_serving()

    async def _check_engine(self, exc: EngineUnavailable) -> None:
        if self.broken or await self.engine.health():
            return
        self.broken = True
        log.error("the engine is dead (%s): this container stops taking requests", exc.message)
        if self.on_broken is not None:
            await self.on_broken()

    async def chat(self, body: dict[str, Any]) -> Reply[dict[str, Any]]:
        started = time.monotonic()
        try:
            reply = await self.engine.chat(body)
        except EngineUnavailable as exc:
            await self._check_engine(exc)
            raise
        self.served += 1
        return Reply(reply, self._facts(started))

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[Reply[dict[str, Any]]]:
        started, first = time.monotonic(), True
        try:
            async for chunk in self.engine.stream(body):
                # The first chunk carries the facts; its engine time: the time to first chunk.
                yield Reply(chunk, self._facts(started) if first else None)
                first = False
        except EngineUnavailable as exc:
            await self._check_engine(exc)
            raise
        self.served += 1

    async def batch(
        self, bodies: Sequence[dict[str, Any]], max_concurrency: int | None = None
    ) -> Reply[BatchResults]:
        started = time.monotonic()
        results = await self.engine.batch(bodies, max_concurrency)
        for result in results:
            if isinstance(result, EngineUnavailable):
                await self._check_engine(result)
                break
        self.served += len(bodies)
        return Reply(results, self._facts(started))

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
