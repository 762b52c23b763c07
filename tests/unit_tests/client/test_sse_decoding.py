"""The client's SSE decoding, one path for ``stream`` and ``astream``: byte chunks cut anywhere,
every line ending, text that holds characters Python counts as line breaks (U+2028, U+0085:
JSON carries them raw, and a line splitter that honours them cuts an event in two), and error
events (``data: {"error": ...}`` or ``event: error``) raised as the matching exception."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from langchain_vllm_autoscale import _http
from langchain_vllm_autoscale._exceptions import (
    BadRequestError,
    RateLimitError,
    ServiceUnavailableError,
    VLLMAutoscaleError,
    error_from_event,
)
from langchain_vllm_autoscale._http import ServiceClient

MODES = pytest.mark.parametrize("mode", ["sync", "async"])
CHUNKS = [
    {"id": "s", "choices": [{"index": 0, "delta": {"content": "line\u2028sep"}}]},
    {"id": "s", "choices": [{"index": 0, "delta": {"content": "nel\u0085\x1c\u2029"}}]},
    {"id": "s", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
]


def event(payload: Any) -> bytes:
    # Raw UTF-8, as the wrapper's orjson writes it (json.dumps would escape the separators).
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


class Pieces(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __init__(self, body: bytes, every: int) -> None:
        self.pieces = [body[i : i + every] for i in range(0, len(body), every)]

    def __iter__(self) -> Iterator[bytes]:
        yield from self.pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def stream(body: bytes, mode: str, every: int = 10_000, into: list[Any] | None = None) -> list:
    got: list[Any] = [] if into is None else into

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Pieces(body, every),
                              headers={"content-type": "text/event-stream"})  # fmt: skip

    transport = httpx.MockTransport(handler)
    client = ServiceClient(
        "http://wrapper.test", api_key=None, timeout=5, connect_timeout=1, max_retries=0,
        transport=transport, async_transport=transport,
    )  # fmt: skip
    if mode == "sync":
        got.extend(client.stream("/v1/chat/completions", {}))
        return got

    async def consume() -> None:
        async for item in client.astream("/v1/chat/completions", {}):
            got.append(item)

    asyncio.run(consume())
    return got


BODY = b": keep-alive\n\n" + b"".join(event(c) for c in CHUNKS) + b"data: [DONE]\n\n"


@MODES
@pytest.mark.parametrize("every", [1, 2, 3, 7, 10_000])
def test_text_with_unicode_line_breaks_and_any_cut(mode: str, every: int) -> None:
    assert stream(BODY, mode, every) == CHUNKS


@MODES
@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
@pytest.mark.parametrize("every", [1, 10_000])
def test_every_line_ending(mode: str, ending: bytes, every: int) -> None:
    assert stream(BODY.replace(b"\n", ending), mode, every) == CHUNKS


@MODES
def test_data_lines_of_one_event_join(mode: str) -> None:
    body = b'data: {"id":\ndata: "s", "choices": []}\n\ndata: [DONE]\n\n'
    assert stream(body, mode) == [{"id": "s", "choices": []}]


@MODES
def test_an_event_the_stream_ends_in_is_still_delivered(mode: str) -> None:
    assert stream(event(CHUNKS[0]).rstrip(b"\n"), mode) == CHUNKS[:1]


@MODES
@pytest.mark.parametrize(
    ("error", "cls", "status"),
    [
        (b'event: error\ndata: {"error": {"message": "slow down", "code": 429}}\n\n',
         RateLimitError, 429),
        (b'event: error\ndata: {"message": "bad", "code": 400}\n\n', BadRequestError, 400),
        (b"event: error\ndata: the engine died\n\n", ServiceUnavailableError, 503),
        (event({"error": {"message": "gone", "code": 503}}), ServiceUnavailableError, 503),
    ],
)  # fmt: skip
def test_error_events_mid_stream(mode: str, error: bytes, cls: type, status: int) -> None:
    got: list[Any] = []
    with pytest.raises(cls) as info:
        stream(event(CHUNKS[0]) + error + b"data: [DONE]\n\n", mode, into=got)
    assert got == CHUNKS[:1]
    assert type(info.value) is cls and info.value.status_code == status


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"error": {"message": "m", "code": 503}}, 503),
        ({"error": {"message": "m", "code": "429"}}, 429),
        ({"error": {"message": "m", "code": "context_length_exceeded"}}, 400),
        ({"error": {"message": "m"}}, 503),
        ({"message": "m", "code": 404}, 404),
        ("plain text", 503),
    ],
)
def test_error_from_event_status(body: Any, status: int) -> None:
    error = error_from_event(body)
    assert isinstance(error, VLLMAutoscaleError) and error.status_code == status


def test_the_one_line_helper_reads_a_line_as_a_whole_event() -> None:
    assert _http._sse_data("data: " + json.dumps(CHUNKS[0], ensure_ascii=False)) == CHUNKS[0]
    assert _http._sse_data("event: error") is None
