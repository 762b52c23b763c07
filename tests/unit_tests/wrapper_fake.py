"""A fake engine transport and helpers for the wrapper's offline tests (no engine, no sockets).

``FakeTransport`` implements ``deploy.core.contract.EngineTransport`` the way ``LocalTransport``
does (a stream's first ``Reply`` carries the ``Facts``), records every call, and is steered
by plain attributes: what to answer, what to raise, how long a stream waits before its first
part.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import EllipsisType
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.types import Message

from deploy.core.contract import (
    BatchResults,
    EngineState,
    EngineStatus,
    EngineTransport,
    Facts,
    Reply,
    engine_endpoint,
)
from deploy.core.errors import EngineUnavailable
from deploy.settings.settings import Settings
from deploy.wrapper import create_app

__all__ = [
    "KEY",
    "MODEL",
    "FakeTransport",
    "app_for",
    "assert_error",
    "chunk",
    "client_for",
    "completion",
    "drop_stream",
    "fresh_app",
    "make_settings",
    "sse_data",
    "sse_events",
    "usage_chunk",
]

KEY = "test-key"
MODEL = "fake/model-1"
BASE_URL = "http://wrapper"


def completion(content: str = "hello", prompt_tokens: int = 7, completion_tokens: int = 5) -> dict:
    """A vLLM chat-completion response."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def chunk(content: str) -> dict[str, Any]:
    """A vLLM stream chunk carrying one piece of text."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }


def usage_chunk(prompt_tokens: int = 3, completion_tokens: int = 2) -> dict[str, Any]:
    """vLLM's last stream chunk under ``stream_options.include_usage``: usage, no choices."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def text_completion(
    text: str = "hello", prompt_tokens: int = 4, completion_tokens: int = 2
) -> dict[str, Any]:
    """vLLM's ``/v1/completions`` answer."""
    return {
        "id": "cmpl-fake", "object": "text_completion", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }  # fmt: skip


def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    """vLLM's ``/v1/embeddings`` answer: a 3-dimensional vector per input, from its length."""
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [{"object": "embedding", "index": i, "embedding": [float(len(str(t))), 1.0, 0.0]}
            for i, t in enumerate(inputs)]  # fmt: skip
    tokens = sum(len(str(t).split()) for t in inputs)
    return {"object": "list", "model": body.get("model"), "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


class FakeTransport:
    """An in-memory ``EngineTransport``: records calls, answers what its attributes say."""

    def __init__(self, model_name: str = MODEL) -> None:
        self.model_name = model_name
        self.reset()

    def reset(self) -> None:
        """Forget every call and answer as a new fake would (apps are shared between tests)."""
        self.facts = Facts()
        """Copied into every reply (a stream's first part only)."""
        # chat
        self.chat_result: dict[str, Any] = completion()
        self.chat_error: Exception | None = None
        self.chat_bodies: list[dict[str, Any]] = []
        # stream
        self.stream_chunks: list[dict[str, Any]] = [chunk("Hel"), chunk("lo"), usage_chunk()]
        self.stream_delay = 0.0
        """Seconds before the first part (a cold start)."""
        self.stream_error: Exception = EngineUnavailable("engine connection lost")
        self.stream_error_at: int | None = None
        """Raise ``stream_error`` instead of yielding the chunk at this index."""
        self.stream_hang_at: int | None = None
        """Wait forever (until cancelled) instead of yielding the chunk at this index."""
        self.stream_bodies: list[dict[str, Any]] = []
        self.streams_closed = 0
        # batch
        self.batch_results: BatchResults | None = None
        """None: one ``completion`` a body."""
        self.batch_error: Exception | None = None
        self.batch_calls: list[tuple[list[dict[str, Any]], int | None]] = []
        # service
        self.engine_status = EngineStatus(
            state="cold",
            queue_depth=2,
            in_flight=0,
            cold_starts=1,
            scaledown_window=120.0,
            last_request_at=None,
            last_error=None,
            extra={"engine_pid": None},
        )
        self.status_calls = 0
        self.warmups = 0
        self.closed = False

    def _facts(self) -> Facts:
        return dataclasses.replace(self.facts)

    async def chat(self, body: dict[str, Any]) -> Reply[dict[str, Any]]:
        self.chat_bodies.append(copy.deepcopy(body))
        if self.chat_error is not None:
            raise self.chat_error
        endpoint, plain = engine_endpoint(body)  # as the engine reads it: a bad one raises
        if endpoint == "/v1/embeddings":
            return Reply(embeddings(plain), self._facts())
        if endpoint == "/v1/completions":
            return Reply(text_completion(), self._facts())
        return Reply(copy.deepcopy(self.chat_result), self._facts())

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[Reply[dict[str, Any]]]:
        self.stream_bodies.append(copy.deepcopy(body))
        try:
            if self.stream_delay:
                await asyncio.sleep(self.stream_delay)
            for i, part in enumerate(self.stream_chunks):
                if i == self.stream_error_at:
                    raise self.stream_error
                if i == self.stream_hang_at:
                    await asyncio.Event().wait()
                yield Reply(copy.deepcopy(part), self._facts() if i == 0 else None)
            if self.stream_error_at is not None and self.stream_error_at >= len(self.stream_chunks):
                raise self.stream_error
        finally:
            self.streams_closed += 1

    async def batch(
        self, bodies: Sequence[dict[str, Any]], max_concurrency: int | None = None
    ) -> Reply[BatchResults]:
        self.batch_calls.append((copy.deepcopy(list(bodies)), max_concurrency))
        if self.batch_error is not None:
            raise self.batch_error
        results: BatchResults
        if self.batch_results is None:
            results = [completion(f"answer {i}") for i in range(len(bodies))]
        else:
            results = list(self.batch_results)
        return Reply(results, self._facts())

    async def status(self) -> EngineStatus:
        self.status_calls += 1
        return self.engine_status

    def state_hint(self) -> EngineState:
        return self.engine_status.state

    async def warmup(self) -> EngineStatus:
        self.warmups += 1
        return dataclasses.replace(self.engine_status, state="starting")

    async def aclose(self) -> None:
        self.closed = True


def _keeps_the_protocol(fake: FakeTransport) -> EngineTransport:
    return fake  # mypy checks that the fake is an EngineTransport


def make_settings(**overrides: Any) -> Settings:
    """Small limits, a key, and every value the tests rely on set explicitly (not from env)."""
    values: dict[str, Any] = {
        "wrapper_api_key": SecretStr(KEY),
        "heartbeat_interval": 10.0,
        "max_messages": 4,
        "max_tokens_limit": 64,
        "max_batch": 3,
        "max_body_bytes": 2048,
        "default_max_tokens": None,
        "scaledown_window": 120,
        "gpu_price_per_hour": 2.5,
        # Apps are shared between tests: a cached answer would leak from one to the next
        # (the gateway's tests turn the cache on, in fresh apps).
        "cache_max_entries": 0,
    }
    values.update(overrides)
    return Settings(**values)


@functools.cache
def _cached_app(overrides: tuple[tuple[str, Any], ...]) -> tuple[FastAPI, FakeTransport]:
    fake = FakeTransport()
    return create_app(fake, make_settings(**dict(overrides))), fake


def app_for(**overrides: Any) -> tuple[FastAPI, FakeTransport]:
    """The wrapper app for ``make_settings(**overrides)`` and its fake transport, reset.

    Built once per settings and shared between tests (building an app costs ~20 ms, far more
    than a request): only its metrics outlive a test, so tests of metrics use ``fresh_app``."""
    app, fake = _cached_app(tuple(sorted(overrides.items())))
    fake.reset()
    return app, fake


def fresh_app(**overrides: Any) -> tuple[FastAPI, FakeTransport]:
    """A new wrapper app (new metrics) over a new fake transport."""
    fake = FakeTransport()
    return create_app(fake, make_settings(**overrides)), fake


@asynccontextmanager
async def client_for(
    app: FastAPI, *, auth: bool = True, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on ``app``, in-process (ASGI, no socket); ``auth`` sends the key."""
    headers = {"Authorization": f"Bearer {KEY}"} if auth else {}
    asgi = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(
        transport=asgi, base_url=BASE_URL, headers=headers, timeout=5.0
    ) as client:
        yield client


def assert_error(
    response: httpx.Response,
    status: int,
    *,
    param: str | EllipsisType | None = ...,
    type_: str | None = None,
) -> dict[str, Any]:
    """``response`` is ``status`` with OpenAI's error body; returns its ``error`` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert "error" in body and set(body) <= {"error", "detail"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if param is not ...:
        assert error["param"] == param, error
    if type_ is not None:
        assert error["type"] == type_, error
    return error  # type: ignore[no-any-return]


def sse_events(text: str) -> list[str]:
    """The events of an SSE body, in order (``data: ...`` lines and ``: comment`` lines)."""
    return [event for event in text.split("\n\n") if event]


def sse_data(events: list[str]) -> list[Any]:
    """The JSON payloads of the ``data:`` events (``[DONE]`` as the string)."""
    out: list[Any] = []
    for event in events:
        if event.startswith("data: "):
            payload = event.removeprefix("data: ")
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


async def drop_stream(
    app: FastAPI,
    body: dict[str, Any],
    token: str | None = KEY,
    after: int = 1,
    path: str = "/v1/chat/completions",
) -> list[Message]:
    """POST a stream to ``path`` over raw ASGI and disconnect once ``after`` ``data:``
    events have arrived (a client that goes away mid-stream); the messages sent."""
    raw = json.dumps(body).encode()
    headers = [(b"host", b"wrapper"), (b"content-type", b"application/json"),
               (b"content-length", str(len(raw)).encode())]  # fmt: skip
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(),
        "root_path": "", "query_string": b"", "headers": headers,
        "client": ("127.0.0.1", 1), "server": ("wrapper", 80),
    }  # fmt: skip
    sent: list[Message] = []
    enough = asyncio.Event()
    requested = False
    seen = 0

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await enough.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal seen
        sent.append(message)
        if message["type"] == "http.response.start" and message["status"] != 200:
            enough.set()
        if message["type"] == "http.response.body":
            seen += message.get("body", b"").count(b"data: ")
            if seen >= after or not message.get("more_body", False):
                enough.set()

    await asyncio.wait_for(app(scope, receive, send), 5)
    return sent
