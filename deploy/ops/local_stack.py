"""The whole service on one machine: the wrapper (uvicorn, in a thread) over a local engine.

``vllm-autoscale serve --local``, the test suite's session fixture, the examples' CI smoke
tests and the benchmarks all start the stack through ``LocalStack``, so they run the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI

from ..engine.local_embedding import LOCAL_EMBEDDING_MODEL, local_embedding_config
from ..engine.local_model import local_engine_config
from ..engine.process import EngineConfig, free_port
from ..settings.settings import Settings
from ..transports.local import LocalTransport
from ..wrapper import create_app
from ..wrapper.http_server import server_config

try:  # uvloop, as uvicorn itself would pick: the wrapper's hop is its hot path
    import uvloop
except ImportError:  # not installed on Windows
    uvloop = None  # type: ignore[assignment]

__all__ = ["LocalStack"]

T = TypeVar("T")


class LocalStack:
    """Wrapper + engine on localhost. ``with LocalStack() as stack: ... stack.url``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        settings: Settings | None = None,
        engine_config: EngineConfig | None = None,
        engine_log: str | Path | None = None,
        scaledown_window: float | None = None,
        warm: bool = False,
        access_log: bool = False,
        embeddings: bool = False,
    ) -> None:
        """``embeddings``: also serve the local embedding model (all-MiniLM-L6-v2), its
        engine started by the first request that needs it."""
        self.settings = settings or Settings()
        self.host = host
        self.port = port or free_port(host)
        first = self.settings.served_models()[0]
        self.engine_config = engine_config or local_engine_config(
            log_file=str(engine_log) if engine_log else None,
            **(
                {"served_name": first.name, "lora_modules": dict(first.adapters),
                 "enable_lora": first.lora}
                if self.settings.models else {}
            ),
        )  # fmt: skip
        window = self.settings.scaledown_window if scaledown_window is None else scaledown_window
        self.transport = LocalTransport(
            self.engine_config,
            scaledown_window=window or None,
            max_queue=self.settings.max_queue,
            queue_timeout=self.settings.queue_timeout,
            schedule=self.settings.schedule,
        )
        # VLLM_MODELS: every other served model is the local SmolLM2 in that model's
        # configuration (name, context, adapters), its own engine scaling to zero on its own.
        self.transports: dict[str, LocalTransport] = {self.transport.model_name: self.transport}
        log = str(engine_log) if engine_log else None
        for model in self.settings.served_models()[1:]:
            if model.engine_runner == "pooling":  # an embedding model: the local MiniLM
                self.transports[model.name] = LocalTransport(
                    local_embedding_config(log_file=log, served_name=model.name),
                    scaledown_window=(model.scaledown_window if scaledown_window is None
                                      else window) or None,
                )  # fmt: skip
                continue
            config = local_engine_config(
                log_file=str(engine_log) if engine_log else None, served_name=model.name,
                max_model_len=min(model.max_model_len or 2048, 2048),
                lora_modules=dict(model.adapters), enable_lora=model.lora,
                max_lora_rank=model.max_lora_rank,
            )  # fmt: skip
            own_window = model.scaledown_window if scaledown_window is None else window
            self.transports[model.name] = LocalTransport(
                config, scaledown_window=own_window or None, max_queue=model.max_queue,
                queue_timeout=model.queue_timeout,
            )  # fmt: skip
        if embeddings and LOCAL_EMBEDDING_MODEL not in self.transports:
            self.transports[LOCAL_EMBEDDING_MODEL] = LocalTransport(
                local_embedding_config(log_file=log), scaledown_window=window or None
            )
        self.app: FastAPI = create_app(self.transports, self.settings)
        self.warm = warm
        # Time-outs on receiving requests and a connection cap: see deploy/wrapper/http_server.py.
        self._server = uvicorn.Server(
            server_config(
                self.app, self.settings, host=host, port=self.port, log_level="warning",
                access_log=access_log, timeout_graceful_shutdown=5,
            )
        )  # fmt: skip
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> LocalStack:
        """Serve the wrapper; with ``warm=True`` also wait until the engine is ready."""

        def serve() -> None:
            if uvloop is None:
                asyncio.run(self._serve())
            else:
                uvloop.run(self._serve())

        self._thread = threading.Thread(target=serve, name="vllm-autoscale-wrapper", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the wrapper did not start on {self.url}")
            time.sleep(0.02)
        self.loop.call_soon_threadsafe(self.transport.start_schedule)  # no-op without one
        if self.warm:
            self.wait_warm()
        return self

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._server.serve()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The wrapper's event loop (the transport and its engine client live there)."""
        assert self._loop is not None, "the stack is not running"
        return self._loop

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Run a coroutine on the wrapper's event loop (transport methods live there)."""
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)  # type: ignore[arg-type]

    def wait_warm(self, timeout: float | None = None) -> None:
        """Start the engine if it is cold and wait until it serves."""
        limit = timeout or self.engine_config.startup_timeout
        self.call(self.transport.ensure_warm, limit)

    def status(self) -> dict[str, Any]:
        return self.call(self.transport.status).to_dict()

    def stop(self) -> None:
        """Drain, then stop the wrapper; its shutdown stops the engine (nothing is left
        running). Draining: no new work; in-flight requests get ``drain_grace`` seconds;
        streams still open then end with an error event and ``[DONE]``."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            service = self.app.state.service
            grace = self.settings.drain_grace
            with contextlib.suppress(Exception):
                self.call(lambda: service.drain(grace), timeout=grace + 10)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=60)
        # Belt and braces: if the server never ran its shutdown, the engines still go.
        for transport in self.transports.values():
            transport.engine.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
