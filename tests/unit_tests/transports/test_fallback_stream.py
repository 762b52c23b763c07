"""The cold fallback's stream read with the one SSE codec (deploy/core/sse.py): chunks cut
anywhere, CRLF, raw U+2028 in a JSON string (a line splitter that honours it cuts the event),
``[DONE]`` required, and an error event (either form) a generic 503 whose upstream text is only
logged, redacted."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from deploy.core.errors import EngineUnavailable
from deploy.transports.fallback import FallbackTransport

CHUNKS = [
    {"id": "f", "choices": [{"index": 0, "delta": {"content": "a\u2028b\u0085c"}}]},
    {"id": "f", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
]


def event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


class Pieces(httpx.AsyncByteStream):
    def __init__(self, body: bytes, every: int) -> None:
        self.pieces = [body[i : i + every] for i in range(0, len(body), every)]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def fallback(body: bytes, every: int = 10_000) -> FallbackTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Pieces(body, every))

    return FallbackTransport("http://fb/v1/", "fb-secret-0123", "small",
                             http_transport=httpx.MockTransport(handler))  # fmt: skip


async def read(transport: FallbackTransport, got: list[Any] | None = None) -> list[Any]:
    got = [] if got is None else got
    async for reply in transport.stream({"messages": []}):
        got.append(reply.body)
    return got


@pytest.mark.parametrize("every", [1, 3, 10_000])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
async def test_the_stream_however_cut(every: int, ending: bytes) -> None:
    body = (b": hello\n\n" + b"".join(event(c) for c in CHUNKS) + b"data: [DONE]\n\n").replace(
        b"\n", ending
    )
    assert await read(fallback(body, every)) == CHUNKS


async def test_a_stream_cut_before_done_is_a_503() -> None:
    got: list[Any] = []
    with pytest.raises(EngineUnavailable, match="closed the stream before it finished"):
        await read(fallback(event(CHUNKS[0])), got)
    assert got == CHUNKS[:1]


@pytest.mark.parametrize(
    "error",
    [
        event({"error": {"message": "key sk-abc123 lost its quota", "code": 429}}),
        b"event: error\ndata: key sk-abc123 lost its quota\n\n",
    ],
)
async def test_an_error_event_is_generic_and_only_logged_redacted(
    error: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    got: list[Any] = []
    with pytest.raises(EngineUnavailable) as info:
        await read(fallback(event(CHUNKS[0]) + error + b"data: [DONE]\n\n"), got)
    assert got == CHUNKS[:1]
    assert info.value.message.startswith("the cold fallback failed during the stream")
    assert info.value.status_code == 503 and info.value.retry_after is not None
    assert "lost its quota" in caplog.text and "sk-abc123" not in caplog.text


async def test_a_payload_that_is_not_json_is_a_503() -> None:
    with pytest.raises(EngineUnavailable, match="no JSON stream from the cold fallback"):
        await read(fallback(b"data: <html>\n\n"))
