"""The server side's SSE codec (deploy/core/sse.py): what it encodes decodes back, however the
bytes are cut; comments and other fields are skipped; ``[DONE]`` ends a stream; an error event
(vLLM's ``data: {"error": ...}`` mid-stream, or ``event: error``) raises one ``UpstreamError``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
import pytest

from deploy.core import sse
from deploy.core.errors import ServiceError, UpstreamError

CHUNKS = [
    {"id": "c", "choices": [{"index": 0, "delta": {"content": "Bon"}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"content": "jour\n\u2028\u0085\r"}}]},
    {"id": "c", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
]
ERROR = {"error": {"message": "boom", "type": "BadRequestError", "param": None, "code": 400}}


async def aiter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def cut(data: bytes, every: int) -> list[bytes]:
    return [data[i : i + every] for i in range(0, len(data), every)]


async def payloads(source: Iterable[Any], *, lines: bool = False) -> tuple[list[Any], bool]:
    stream = sse.JSONStream(aiter(source), lines=lines)
    return [p async for p in stream], stream.done


def decode_all(data: bytes) -> list[sse.Event]:
    decoder = sse.Decoder()
    return decoder.feed(data) + decoder.close()


# -- encoding ------------------------------------------------------------------------------------


def test_encode_is_one_data_line_and_a_blank_line() -> None:
    assert sse.encode({"a": 1}) == b'data: {"a":1}\n\n'
    assert sse.encode({"a": 1}, event="error") == b'event: error\ndata: {"a":1}\n\n'
    assert sse.DONE == b"data: [DONE]\n\n"
    assert sse.KEEP_ALIVE == b": keep-alive\n\n" == sse.comment("keep-alive")
    assert sse.comment("two\nlines") == b": two\n: lines\n\n"


def test_the_wrapper_s_names_are_the_codec_s() -> None:
    from deploy.wrapper.serving import streaming

    assert streaming.DONE == sse.DONE and streaming.KEEP_ALIVE == sse.KEEP_ALIVE
    assert streaming.sse(CHUNKS[0]) == sse.encode(CHUNKS[0])


# -- decoding ------------------------------------------------------------------------------------


def stream_bytes(*parts: bytes) -> bytes:
    return b"".join(parts)


WHOLE = stream_bytes(
    sse.KEEP_ALIVE,
    *(sse.encode(c) for c in CHUNKS),
    sse.comment("still here"),
    sse.DONE,
    sse.encode({"id": "after-done"}),  # nothing after [DONE] is read
)


@pytest.mark.parametrize("every", [1, 2, 3, 5, 7, 64, 10_000])
async def test_round_trip_with_chunk_boundaries_anywhere(every: int) -> None:
    got, done = await payloads(cut(WHOLE, every))
    assert got == CHUNKS and done


@pytest.mark.parametrize("ending", [b"\r\n", b"\r", b"\n"])
@pytest.mark.parametrize("every", [1, 2, 3, 10_000])
async def test_every_line_ending_and_a_cr_lf_cut_between_chunks(ending: bytes, every: int) -> None:
    data = WHOLE.replace(b"\n", ending)
    got, done = await payloads(cut(data, every))
    assert got == CHUNKS and done


async def test_lines_as_aiohttp_gives_them_keep_their_ending() -> None:
    got, done = await payloads(WHOLE.splitlines(keepends=True))
    assert got == CHUNKS and done


async def test_lines_as_httpx_gives_them_without_their_ending() -> None:
    lines = [line.decode() for line in WHOLE.split(b"\n")]
    got, done = await payloads(lines, lines=True)
    assert got == CHUNKS and done


async def test_text_chunks_are_read_like_bytes() -> None:
    got, done = await payloads([WHOLE.decode()[:40], WHOLE.decode()[40:]])
    assert got == CHUNKS and done


def test_a_multi_byte_character_cut_in_two_is_whole_again() -> None:
    data = sse.encode({"t": "é€😀"})
    decoder = sse.Decoder()
    events = [e for piece in cut(data, 1) for e in decoder.feed(piece)]
    assert [orjson.loads(e.data) for e in events] == [{"t": "é€😀"}]


def test_the_spec_s_fields() -> None:
    data = (
        b"\xef\xbb\xbf: a comment\n"
        b"event: update\nid: 7\nretry: 1000\ndata: first\ndata:second\nunknown: x\n\n"
        b"data\n\n"  # a field with no colon: an empty data line
        b"event: lonely\n\n"  # no data: nothing dispatched
        b"data: after\n\n"
    )
    assert decode_all(data) == [
        sse.Event("first\nsecond", "update", "7"),
        sse.Event("", "message", "7"),
        sse.Event("after", "message", "7"),
    ]


def test_an_event_the_stream_ends_in_is_still_delivered() -> None:
    assert decode_all(b"data: 1\n\ndata: 2") == [sse.Event("1"), sse.Event("2")]
    assert decode_all(b"data: 1\n") == [sse.Event("1")]


async def test_a_stream_without_done_is_not_done() -> None:
    got, done = await payloads([sse.encode(CHUNKS[0])])
    assert got == CHUNKS[:1] and not done


async def test_a_payload_that_is_not_json_raises_value_error() -> None:
    with pytest.raises(ValueError):
        await payloads([b"data: <html>502 Bad Gateway</html>\n\n"])


# -- error events --------------------------------------------------------------------------------


@pytest.mark.parametrize("every", [1, 4, 10_000])
async def test_an_error_event_mid_stream_raises_after_what_came_before(every: int) -> None:
    data = sse.encode(CHUNKS[0]) + sse.encode(ERROR) + sse.encode(CHUNKS[1]) + sse.DONE
    stream = sse.JSONStream(aiter(cut(data, every)))
    got: list[Any] = []
    with pytest.raises(UpstreamError) as info:
        async for payload in stream:
            got.append(payload)
    assert got == CHUNKS[:1] and not stream.done
    assert info.value.status_code == 400 and info.value.message == "boom"


@pytest.mark.parametrize(
    ("event", "status", "message"),
    [
        (sse.encode(ERROR), 400, "boom"),
        (sse.encode({"error": {"message": "gone", "code": 503}}), 503, "gone"),
        (sse.encode({"error": {"message": "slow", "code": "429"}}), 429, "slow"),
        # no HTTP status in it: the engine's failure, worth retrying
        (sse.encode({"error": {"message": "m"}}), 503, "m"),
        (sse.encode({"error": {"message": "m", "code": "context_length_exceeded"}}), 503, "m"),
        (sse.encode({"error": {"message": "m", "code": 1}}), 503, "m"),
        (sse.encode({"error": "engine crashed"}), 503, "engine crashed"),
        (sse.encode({"error": {"message": "m", "code": 400}, "choices": []}), 400, "m"),
        # `event: error`, its data JSON (either shape) or text
        (sse.encode(ERROR, event="error"), 400, "boom"),
        (sse.encode({"message": "m", "code": 502}, event="error"), 502, "m"),
        (b"event: error\ndata: the engine died\n\n", 503, "the engine died"),
    ],
)
async def test_error_events_are_read_one_way(event: bytes, status: int, message: str) -> None:
    with pytest.raises(UpstreamError) as info:
        await payloads([sse.encode(CHUNKS[0]), event, sse.DONE])
    error = info.value
    assert isinstance(error, ServiceError)
    assert (error.status_code, error.message) == (status, message)
    assert error.to_body()["error"]["code"] == status


async def test_an_error_key_beside_choices_is_an_ordinary_chunk() -> None:
    chunk = {**CHUNKS[0], "error": None}
    got, done = await payloads([sse.encode(chunk), sse.DONE])
    assert got == [chunk] and done


def test_error_of_tells_events_apart() -> None:
    assert sse.error_of(sse.Event('{"a": 1}'), {"a": 1}) is None
    assert sse.error_of(sse.Event('{"error": {}}'), {"error": {}}) is not None
    assert sse.error_of(sse.Event("text", "error")) is not None


async def test_leaving_early_closes_the_source() -> None:
    closed: list[bool] = []

    async def source() -> AsyncIterator[bytes]:
        try:
            for chunk in CHUNKS:
                yield sse.encode(chunk)
        finally:
            closed.append(True)

    async with sse.JSONStream(source()) as stream:
        async for payload in stream:
            assert payload == CHUNKS[0]
            break
    assert closed == [True] and not stream.done
