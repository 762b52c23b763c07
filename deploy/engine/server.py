"""What runs inside a GPU container: one engine and the calls the wrapper makes to it.

``deploy/modal_app.py``'s ``VLLMInference`` class is a thin Modal shell around
``InferenceServer``; keeping the logic here makes it importable and testable without Modal.
Each answer is a ``Reply`` (``deploy/core/contract.py``) whose facts say which container served
it, when that container began serving and how long the engine took; the wrapper's
``ModalTransport`` turns them into cold-start and queue-wait facts.

A container's life: fetch the weights and the declared LoRA adapters (``HF_TOKEN`` stays in
this process; vLLM gets local folders and no secret), start vLLM, serve. Adapters loaded at
run time (``load_adapter``) are fetched the same way, by the container that gets the call.
With GPU memory snapshots, the part before the snapshot also sends a few warm-up requests and
puts vLLM to sleep; each restored container wakes it and only then takes its own id and boot
time, so restored containers are told apart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.contract import ENDPOINT_KEY, BatchResults, Facts, Reply
from ..core.errors import EngineRequestError, EngineStartError, EngineUnavailable
from .process import EngineConfig, VLLMEngine

__all__ = ["InferenceServer", "fetch_adapter", "fetch_adapters", "fetch_weights"]

log = logging.getLogger("vllm_autoscale.inference")

# The Hub repos of instruct models also carry the original checkpoint (Llama 3.1 8B: another
# 16 GB in original/*.pth) and other formats; vLLM loads the safetensors.
_NOT_NEEDED = ["original/*", "*.pth", "*.pt", "*.bin", "*.gguf", "*.msgpack", "*.h5", "*.onnx"]
# An adapter repo is small; only intermediate training checkpoints are worth skipping.
_ADAPTER_NOT_NEEDED = ["checkpoint-*/*", "*.gguf", "*.onnx"]
_WARMUP_BODY = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}
_WARMUP_EMBEDDING = {ENDPOINT_KEY: "/v1/embeddings", "input": "Hello"}


def fetch_weights(model: str, revision: str | None = None) -> str:
    """A local folder with the model's weights: ``model`` itself when it is one, else the Hub
    snapshot in the Hugging Face cache (a Volume on Modal), downloaded on the first start."""
    if Path(model).is_dir():
        return model
    from huggingface_hub import snapshot_download  # noqa: PLC0415 - huggingface_hub is needed only when a model is downloaded
    from huggingface_hub.errors import HfHubHTTPError  # noqa: PLC0415 - huggingface_hub is needed only when a model is downloaded

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


def fetch_adapter(source: str) -> str:
    """A local folder with a LoRA adapter: ``source`` itself when it is a path (one starting
    with ``/`` is used as is: on Modal, a folder on a mounted Volume), else the Hub repo's
    snapshot in the Hugging Face cache (``org/name``), downloaded on first use. A source that
    cannot be had is an ``EngineRequestError`` (404) with the reason."""
    if source.startswith("/") or Path(source).is_dir():
        return source
    from huggingface_hub import snapshot_download  # noqa: PLC0415 - huggingface_hub is needed only when a model is downloaded
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError  # noqa: PLC0415 - huggingface_hub is needed only when a model is downloaded

    try:
        path = snapshot_download(source, ignore_patterns=_ADAPTER_NOT_NEEDED)
    except (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError) as exc:
        raise EngineRequestError(
            f"no LoRA adapter at {source!r}: not a folder, and not downloadable from Hugging "
            f"Face ({exc}). A private or gated repo needs HF_TOKEN in the vllm-secrets Modal "
            "Secret.",
            status_code=404,
            param="lora_path",
        ) from exc
    log.info("LoRA adapter %s ready at %s", source, path)
    return path


def fetch_adapters(adapters: Mapping[str, str]) -> dict[str, str]:
    """Each adapter's local folder (``fetch_adapter``), by name; at start, a failure is the
    container's start failing (``EngineStartError``), as for the weights."""
    try:
        return {name: fetch_adapter(source) for name, source in adapters.items()}
    except EngineRequestError as exc:
        raise EngineStartError(exc.message) from exc


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
        self.up_since = time.time()
        """When this container began costing: its start, or its restore (``wake_from_snapshot``)."""
        self.served = 0
        self.adapters: dict[str, str] = {}
        """LoRA adapters this container's engine serves: name -> source (as declared or
        given to ``load_adapter``: a path or a Hub repo id)."""

    def begin_serving(self) -> None:
        # Taken when this container starts serving: after a restore, not before the snapshot
        # (else every container restored from it would share one id and boot time).
        self.container_id = uuid.uuid4().hex[:12]
        self.booted_at = time.time()

    def _facts(self, started: float) -> Facts:
        return Facts(
            container=self.container_id,
            booted_at=self.booted_at,
            up_since=self.up_since,
            engine_s=time.monotonic() - started,
        )

    async def _start_engine(self) -> None:
        model = fetch_weights(self.config.model, self.config.revision)
        declared = dict(self.config.lora_modules)
        adapters = fetch_adapters(declared)
        changes: dict[str, Any] = {}
        if model != self.config.model:  # vLLM loads the local folder and never calls the Hub
            changes |= {"model": model, "revision": None}
        if adapters != declared:  # nor for an adapter
            changes["lora_modules"] = adapters
        if changes:
            self.engine.config = dataclasses.replace(self.config, **changes)
        self.adapters = declared
        await self.engine.start()

    async def start(self) -> None:
        await self._start_engine()
        self.begin_serving()

    async def start_for_snapshot(self) -> None:
        """Start, warm up, then put vLLM to sleep: the snapshot holds a booted engine."""
        await self._start_engine()
        pooling = self.config.runner == "pooling"  # an embedding model has no chat route
        for _ in range(self.warmup_requests):
            await self.engine.chat(_WARMUP_EMBEDDING if pooling else _WARMUP_BODY)
        await self.engine.sleep(level=1)
        # No pooled connection may cross the snapshot: the restored process reconnects.
        await self.engine.aclose()

    async def wake_from_snapshot(self) -> None:
        self.up_since = time.time()  # a restored container is billed from its restore
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

    def _require_lora(self) -> None:
        if not self.config.enable_lora:
            raise EngineRequestError(
                f"{self.config.served_model_name} was started without LoRA: declare its "
                "adapters (VLLM_MODELS' adapters) to serve any",
                status_code=400,
                param="lora_name",
            )

    async def load_adapter(self, name: str, source: str) -> dict[str, Any]:
        """Serve a LoRA adapter under ``name`` on this container's engine from now on: a Hub
        repo id is downloaded first (into the Hugging Face cache), a path is used as is. The
        same name again with another source replaces its weights. Only this container
        loads it; a container started later serves the declared adapters only."""
        self._require_lora()
        if self.adapters.get(name) != source:
            path = await asyncio.to_thread(fetch_adapter, source)  # serving goes on meanwhile
            await self.engine.load_adapter(name, path, replace=name in self.adapters)
            self.adapters[name] = source
            log.info("LoRA adapter %r loaded from %s", name, source)
        return {"adapter": name, "source": source, "container": self.container_id}

    async def unload_adapter(self, name: str) -> dict[str, Any]:
        """Stop serving a LoRA adapter on this container's engine."""
        self._require_lora()
        if name not in self.adapters:
            raise EngineRequestError(
                f"this engine serves no LoRA adapter named {name!r}",
                status_code=404,
                param="lora_name",
            )
        await self.engine.unload_adapter(name)
        del self.adapters[name]
        log.info("LoRA adapter %r unloaded", name)
        return {"adapter": name, "container": self.container_id}

    def status(self) -> dict[str, Any]:
        return {
            "container": self.container_id,
            "booted_at": self.booted_at,
            "served": self.served,
            "engine_running": self.engine.is_running(),
            "adapters": sorted(self.adapters),
        }

    async def stop(self) -> None:
        await self.engine.aclose()
        self.engine.stop()
