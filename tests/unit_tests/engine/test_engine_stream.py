"""``VLLMEngine.stream`` reads vLLM's SSE with the one codec (deploy/core/sse.py): chunks cut
anywhere, ``[DONE]`` required, and vLLM's error events judged like its error answers (4xx: the
request; 5xx: the engine if it is no longer healthy, else this request)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from deploy.core.errors import EngineRequestError, EngineUnavailable
from deploy.core.sse import DONE, encode
from deploy.engine.process import EngineConfig, VLLMEngine

CHUNKS = [
    {"id": "c", "choices": [{"index": 0, "delta": {"content": "Bon"}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"content": "jour\u2028"}}]},
    {"id": "c", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
]


class Content:
    def __init__(self, body: bytes, every: int) -> None:
        self._pieces = [body[i : i + every] for i in range(0, len(body), every)]

    async def iter_any(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            yield piece


class Response:
    def __init__(self, status: int, body: bytes, every: int = 10_000) -> None:
        self.status, self._body = status, body
        self.content = Content(body, every)

    async def read(self) -> bytes:
        return self._body

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class Session:
    def __init__(self, answer: Response, healthy: bool = True) -> None:
        self.answer, self.healthy = answer, healthy

    def post(self, route: str, json: Any = None) -> Response:
        assert route == "/v1/chat/completions" and json["stream"] is True
        return self.answer

    def get(self, route: str, **kwargs: Any) -> Response:
        return Response(200 if self.healthy else 503, b"")  # /health


class LiveProcess:
    pid, returncode = 4242, None

    def poll(self) -> None:
        return None


def engine_with(session: Session) -> VLLMEngine:
    engine = VLLMEngine(EngineConfig(model="m", served_model_name="m"))
    engine._process = LiveProcess()  # type: ignore[assignment]
    engine._client = lambda: session  # type: ignore[method-assign]
    return engine


async def read(session: Session, got: list[Any] | None = None) -> list[Any]:
    got = [] if got is None else got
    async for chunk in engine_with(session).stream({"messages": []}):
        got.append(chunk)
    return got


@pytest.mark.parametrize("every", [1, 3, 10_000])
async def test_the_stream_s_chunks_however_cut(every: int) -> None:
    body = b": hi\n\n" + b"".join(encode(c) for c in CHUNKS) + DONE
    assert await read(Session(Response(200, body, every))) == CHUNKS
    crlf = body.replace(b"\n", b"\r\n")
    assert await read(Session(Response(200, crlf, every))) == CHUNKS


async def test_a_stream_cut_before_done_is_the_engine_lost() -> None:
    got: list[Any] = []
    with pytest.raises(EngineUnavailable, match="closed the stream before it finished"):
        await read(Session(Response(200, encode(CHUNKS[0]))), got)
    assert got == CHUNKS[:1]


def vllm_error(message: str, code: Any) -> bytes:
    return encode({"error": {"message": message, "type": "X", "param": None, "code": code}})


@pytest.mark.parametrize("healthy", [True, False])
@pytest.mark.parametrize(
    ("event", "cls", "status", "message"),
    [
        (vllm_error("bad logits", 400), EngineRequestError, 400, "bad logits"),
        (vllm_error("too long", 413), EngineRequestError, 413, "too long"),
    ],
)
async def test_a_4xx_error_event_is_the_request_s(
    event: bytes, cls: type, status: int, message: str, healthy: bool
) -> None:
    got: list[Any] = []
    with pytest.raises(cls) as info:
        await read(Session(Response(200, encode(CHUNKS[0]) + event + DONE), healthy), got)
    assert got == CHUNKS[:1]
    assert type(info.value) is cls
    assert (info.value.status_code, info.value.message) == (status, message)


async def test_a_5xx_error_event_is_this_request_s_while_vllm_is_healthy() -> None:
    with pytest.raises(EngineRequestError) as info:
        await read(Session(Response(200, vllm_error("oops", 500) + DONE), healthy=True))
    assert info.value.status_code == 400
    assert info.value.message == "vLLM could not serve this request: oops"


async def test_a_5xx_error_event_is_the_engine_s_once_vllm_is_not_healthy() -> None:
    with pytest.raises(EngineUnavailable) as info:
        await read(Session(Response(200, vllm_error("oops", 500) + DONE), healthy=False))
    assert info.value.message == "the engine failed: oops" and info.value.retry_after == 5


async def test_an_error_answer_before_the_stream_is_read_the_same_way() -> None:
    body = json.dumps({"error": {"message": "no", "param": "n", "code": 400}}).encode()
    with pytest.raises(EngineRequestError) as info:
        await read(Session(Response(400, body)))
    assert (info.value.status_code, info.value.message, info.value.param) == (400, "no", "n")
