"""One live local stack per test session: real vLLM (CPU) + the real wrapper, started through
``LocalStack``, the same code ``vllm-autoscale serve --local`` runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from starlette.types import ASGIApp

from deploy.engine.local_embedding import local_embedding_config
from deploy.engine.process import free_port
from deploy.ops.local_stack import LocalStack
from deploy.settings.settings import Settings
from deploy.transports.local import LocalTransport
from deploy.wrapper import create_app
from deploy.wrapper.http_server import server_config

API_KEY = "test-key-" + os.urandom(8).hex()
ENGINE_LOG = Path(tempfile.gettempdir()) / f"vllm-autoscale-test-engine-{os.getpid()}.log"


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    # No response cache on the session's wrapper: tests here time and count the engine's own
    # answers (a replay streams in one delta). The gateway's tests serve their own wrappers.
    settings = Settings(
        wrapper_api_key=SecretStr(API_KEY), heartbeat_interval=2.0, cache_max_entries=0
    )
    # The engine stays up for the whole session (scaledown 0 = never); tests that need a cold
    # engine stop it themselves.
    with LocalStack(settings=settings, scaledown_window=0, warm=True, engine_log=ENGINE_LOG) as s:
        yield s


@pytest.fixture(scope="session")
def base_url(stack: LocalStack) -> str:
    return stack.url


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture
def http(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=120
    ) as client:
        yield client


@pytest.fixture
def warm_stack(stack: LocalStack) -> LocalStack:
    """The stack with its engine running (restarted if an earlier test stopped it)."""
    stack.wait_warm()
    return stack


@contextlib.contextmanager
def serve_on_stack(
    stack: LocalStack, app: ASGIApp, settings: Settings | None = None, port: int | None = None
) -> Iterator[str]:
    """Serve another app on the stack's event loop (where the engine's client lives), without
    lifespan, so stopping it leaves the session's engine running. Yields its URL. With
    ``settings``, on the wrapper's own server (its time-outs and connection cap)."""
    port = port or free_port()
    options: dict = {"host": "127.0.0.1", "port": port, "log_level": "warning", "lifespan": "off"}
    if settings is None:
        config = uvicorn.Config(app, **options)
    else:
        config = server_config(app, settings, **options)
    server = uvicorn.Server(config)
    serving = asyncio.run_coroutine_threadsafe(server.serve(), stack.loop)
    while not server.started:
        if serving.done():
            serving.result()
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        serving.result(30)


@pytest.fixture(scope="session")
def embedding_url(stack: LocalStack) -> Iterator[str]:
    """A wrapper serving the session's chat engine and a local embedding engine
    (all-MiniLM-L6-v2, ~0.5 GiB), on the stack's loop. The embedding engine starts with the
    first request that needs it and stops with the session."""
    embed = LocalTransport(local_embedding_config(log_file=str(ENGINE_LOG)), scaledown_window=None)
    transports = {stack.transport.model_name: stack.transport, embed.model_name: embed}
    try:
        with serve_on_stack(stack, create_app(transports, stack.settings)) as url:
            yield url
    finally:
        stack.call(embed.aclose, timeout=60)  # its engine and its client, on their loop
