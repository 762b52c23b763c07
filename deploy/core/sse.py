"""Server-sent events, the server side's one codec: what the wrapper sends, and how it reads
the streams of vLLM and of the cold fallback. Pure: no web framework or HTTP client here.

Encoding, OpenAI's streams as the wrapper sends them:

    data: {"id": ..., "choices": [...]}\\n\\n      ``encode(payload)``
    : keep-alive\\n\\n                             ``KEEP_ALIVE`` (a comment: clients skip it)
    : vllm-autoscale-progress {...}\\n\\n          ``progress(payload)`` (a comment too: a cold
                                                  start's progress, read by our client only)
    data: [DONE]\\n\\n                             ``DONE``

Decoding follows the SSE specification (lines end with LF, CRLF or CR; a blank line ends an
event; ``data`` lines join with LF; ``: ...`` lines are comments) from what HTTP clients hand
out: byte chunks cut anywhere (httpx's ``aiter_bytes``, aiohttp's ``iter_any``), or lines
(aiohttp's, which keep their ending; httpx's ``aiter_lines``, which do not: ``lines=True``).
One leniency: an event the stream ends in without its blank line is still delivered.

``JSONStream`` reads an OpenAI-style stream: each data event's JSON payload until ``[DONE]``.
An error event, ``data: {"error": {...}}`` (vLLM's, mid-stream) or ``event: error``, raises
the ``UpstreamError`` that ``error_from_body`` makes of it: one reading for every stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import UpstreamError, error_from_body

__all__ = [
    "DONE",
    "KEEP_ALIVE",
    "PROGRESS",
    "Decoder",
    "Event",
    "JSONStream",
    "comment",
    "encode",
    "error_of",
    "events",
    "progress",
]

DONE = b"data: [DONE]\n\n"
"""The end of an OpenAI stream."""
KEEP_ALIVE = b": keep-alive\n\n"
"""A heartbeat comment: keeps proxies and clients on the line while the GPU wakes."""
PROGRESS = b": vllm-autoscale-progress "
"""The prefix of a progress comment. A comment, not an event: every SSE reader (the openai
SDK, litellm, browsers) skips it; ``ChatVLLMAutoscale`` reads the JSON after the prefix."""
_BOM = b"\xef\xbb\xbf"


def encode(payload: Any, *, event: str | None = None) -> bytes:
    """One event whose data is ``payload`` as JSON (orjson's); ``event`` names its type."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


def progress(payload: Any) -> bytes:
    """A progress comment carrying ``payload`` as JSON on one line."""
    return PROGRESS + orjson.dumps(payload) + b"\n\n"


def comment(text: str) -> bytes:
    """A comment event (``: text``), which every reader skips."""
    return b"".join(b": " + line.encode() + b"\n" for line in text.splitlines() or [""]) + b"\n"


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event."""

    data: str
    """Its ``data`` lines, joined with LF."""
    event: str = "message"
    """Its type: ``message`` unless an ``event:`` line named another."""
    id: str | None = None
    """The last event id the stream set, if any."""

    @property
    def is_done(self) -> bool:
        """OpenAI's end of stream, ``data: [DONE]``."""
        return self.data.strip() == "[DONE]"


class Decoder:
    """Incremental SSE decoding: ``feed`` byte chunks (or text) cut anywhere, or ``feed_line``
    whole lines; each returns the events it completed. ``close`` at the end of the stream
    returns the last event if the stream ended inside it."""

    def __init__(self) -> None:
        self._buffer = b""
        self._cr = False  # the last chunk ended with CR: an LF that starts the next is its pair
        self._started = False
        self._data: list[bytes] = []
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, chunk: bytes | str) -> list[Event]:
        if isinstance(chunk, str):
            chunk = chunk.encode()
        if not self._started and chunk:
            self._started = True
            chunk = chunk.removeprefix(_BOM)
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr = False
        if not chunk:
            return []
        self._cr = chunk.endswith(b"\r")
        lines = (self._buffer + chunk).splitlines(keepends=True)
        self._buffer = b"" if lines[-1].endswith((b"\n", b"\r")) else lines.pop()
        out: list[Event] = []
        for line in lines:
            self._line(line.rstrip(b"\r\n"), out)
        return out

    def feed_line(self, line: bytes | str) -> list[Event]:
        """One whole line, its ending kept or not (httpx's ``aiter_lines`` strips it)."""
        if isinstance(line, str):
            line = line.encode()
        out: list[Event] = []
        self._line(line.rstrip(b"\r\n"), out)
        return out

    def close(self) -> list[Event]:
        out: list[Event] = []
        if self._buffer:
            self._line(self._buffer, out)
            self._buffer = b""
        self._line(b"", out)  # an event the stream ended in, blank line or not
        return out

    def _line(self, line: bytes, out: list[Event]) -> None:
        if not line:  # the end of an event
            if self._data:
                data = b"\n".join(self._data).decode(errors="replace")
                out.append(Event(data, self._event or "message", self._id))
            self._data, self._event = [], None
            return
        if line[0] == 0x3A:  # ":": a comment
            return
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode(errors="replace")
        elif name == b"id" and b"\0" not in value:
            self._id = value.decode(errors="replace")
        # "retry" and unknown fields: nothing this reader uses


async def events(
    source: AsyncIterable[bytes | str], *, lines: bool = False
) -> AsyncGenerator[Event, None]:
    """The events of ``source``: byte chunks cut anywhere, or with ``lines`` whole lines
    without their endings. Closing this closes ``source`` too (when it can be closed)."""
    decoder = Decoder()
    feed = decoder.feed_line if lines else decoder.feed
    try:
        async for item in source:
            for event in feed(item):
                yield event
        for event in decoder.close():
            yield event
    finally:
        close = getattr(source, "aclose", None)
        if close is not None:
            await close()


def error_of(event: Event, payload: Any = None) -> UpstreamError | None:
    """The error an event carries, if it is one: ``event: error`` (its data, JSON or text),
    or a JSON payload with an ``"error"`` and no choices (vLLM's error mid-stream).
    ``payload``: the event's data already parsed, if it was."""
    if event.event == "error":
        return error_from_body(None, event.data)
    if isinstance(payload, dict) and "error" in payload and not payload.get("choices"):
        return error_from_body(None, event.data)
    return None


class JSONStream:
    """The JSON payloads of an OpenAI-style stream read from ``source`` (see ``events``), in
    order, until ``data: [DONE]``; ``done`` tells afterwards whether it came (a stream that
    ends without it was cut). An error event raises its ``UpstreamError`` (``error_of``); a
    data event that is not JSON raises orjson's ``JSONDecodeError`` (a ``ValueError``).
    ``aclose`` (or ``async with``) stops the reading early."""

    def __init__(self, source: AsyncIterable[bytes | str], *, lines: bool = False) -> None:
        self._events = events(source, lines=lines)
        self._payloads = self._read()
        self.done = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._payloads

    async def aclose(self) -> None:
        await self._payloads.aclose()
        await self._events.aclose()

    async def __aenter__(self) -> JSONStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _read(self) -> AsyncGenerator[Any, None]:
        async for event in self._events:
            if event.is_done:
                self.done = True
                return
            payload = None if event.event == "error" else orjson.loads(event.data)
            error = error_of(event, payload)
            if error is not None:
                raise error
            yield payload
