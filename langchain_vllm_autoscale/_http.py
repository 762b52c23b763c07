"""HTTP to the wrapper: one sync client per model instance, one async client per event loop,
retries with backoff that honour ``Retry-After`` (cold starts answer 503), redirects followed
(Modal answers requests longer than 150 s with a 303), and SSE decoding (``_SSEDecoder``),
one path for the sync and async streams: comments (the wrapper's keep-alives while the GPU
wakes) are skipped, but for the wrapper's progress comments, which become ``Notice``s, and
an error event, mid-stream, raises the error its body names. Each retry is a ``Notice`` too
(and a WARNING when nobody listens): a wait is never silent."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from langchain_vllm_autoscale._exceptions import (
    APIConnectionError,
    APITimeoutError,
    VLLMAutoscaleError,
    error_from_event,
    error_from_response,
)
from langchain_vllm_autoscale._notices import Notice, Notify

__all__ = ["ServiceClient", "normalize_base_url"]

log = logging.getLogger("langchain_vllm_autoscale")

RETRY_STATUS = frozenset({429, 502, 503, 504})
_PROGRESS = b": vllm-autoscale-progress "
_PROGRESS_EVENT = "vllm_autoscale.progress"
_MAX_BACKOFF = 30.0


def normalize_base_url(url: str) -> str:
    """The wrapper's root URL from either form a user may hold.

    The openai SDK wants ``.../v1``; this client's paths already start with ``/v1`` (and
    ``/warmup``, ``/status`` live at the root), so a trailing ``/v1`` would give
    ``/v1/v1/chat/completions`` and a bare 404. Both ``http://host:8000`` and
    ``http://host:8000/v1`` (with or without a trailing slash) give ``http://host:8000``.
    """
    root = url.strip().rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")].rstrip("/")
    return root


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _worth_retrying(response: httpx.Response) -> bool:
    """A retryable status whose ``Retry-After`` (if any) is within the longest wait a retry
    makes: a key out of its monthly budget is told to come back in days, and hears so now."""
    if response.status_code not in RETRY_STATUS:
        return False
    hinted = _retry_after(response)
    return hinted is None or hinted <= _MAX_BACKOFF * 2


def _backoff(attempt: int, response: httpx.Response | None) -> float:
    hinted = _retry_after(response)
    if hinted is not None:
        return min(hinted, _MAX_BACKOFF * 2)
    return min(_MAX_BACKOFF, 0.5 * 2**attempt) * (0.5 + random.random() / 2)


def _error(response: httpx.Response, body: bytes) -> VLLMAutoscaleError:
    try:
        payload: Any = json.loads(body)
    except ValueError:
        payload = body.decode(errors="replace")
    return error_from_response(response.status_code, payload, response.headers.get("x-request-id"))


def _transport_error(exc: httpx.HTTPError, timeout: float) -> VLLMAutoscaleError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(
            f"no answer within {timeout:g} s ({type(exc).__name__}); a first cold start can take "
            "minutes: raise `timeout` or call `warmup()` first"
        )
    return APIConnectionError(f"cannot reach the service: {exc!r}")


def _retryable(exc: httpx.HTTPError) -> bool:
    # Nothing reached the engine: safe to send again.
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError))


class _SSEDecoder:
    """Server-sent events as the specification reads them, from byte chunks cut anywhere:
    lines end with LF, CRLF or CR (only those: httpx's ``iter_lines`` also splits on U+2028,
    U+0085 and the like, which a JSON string carries raw), a blank line ends an event,
    ``data`` lines join with LF, ``:`` lines are comments. ``feed`` and ``close`` (at the end
    of the stream, which also ends an event left open) give ``(event type, data)`` pairs."""

    def __init__(self) -> None:
        self._buffer = b""
        self._cr = False  # the last chunk ended with CR: an LF that starts the next is its pair
        self._data: list[bytes] = []
        self._event = ""

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr = False
        if not chunk:
            return []
        self._cr = chunk.endswith(b"\r")
        lines = (self._buffer + chunk).splitlines(keepends=True)
        self._buffer = b"" if lines[-1].endswith((b"\n", b"\r")) else lines.pop()
        out: list[tuple[str, str]] = []
        for line in lines:
            self._line(line.rstrip(b"\r\n"), out)
        return out

    def close(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self._buffer:
            self._line(self._buffer, out)
            self._buffer = b""
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[tuple[str, str]]) -> None:
        if not line:  # the end of an event
            if self._data:
                data = b"\n".join(self._data).decode(errors="replace")
                out.append((self._event or "message", data))
            self._data, self._event = [], ""
            return
        if line.startswith(_PROGRESS):  # the wrapper's progress while the GPU wakes
            out.append((_PROGRESS_EVENT, line[len(_PROGRESS) :].decode(errors="replace")))
            return
        if line.startswith(b":"):
            return  # a comment: the wrapper's ": keep-alive"
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode(errors="replace")
        # id, retry and unknown fields: nothing this client uses


def _sse_payload(event: str, data: str) -> Any:
    """One event's meaning: its JSON payload, True at ``[DONE]``; an error event (``event:
    error``, or a payload with an ``"error"`` and no choices) raises its error."""
    if data.strip() == "[DONE]":
        return True
    if event == _PROGRESS_EVENT:
        try:
            return Notice("progress", dict(json.loads(data)))
        except (ValueError, TypeError):
            return None  # a progress line we cannot read is no reason to fail the answer
    try:
        payload = json.loads(data)
    except ValueError:  # not JSON: a proxy's page, a cut line
        if event == "error":
            raise error_from_event(data) from None
        raise error_from_response(502, f"the stream sent a malformed event: {data[:200]}") from None
    if event == "error" or (
        isinstance(payload, dict) and "error" in payload and not payload.get("choices")
    ):
        raise error_from_event(payload)
    return payload


class _SSEStream:
    """The payloads of a chat completion stream, fed its byte chunks: ``feed`` yields each
    payload until ``[DONE]`` (then ``done``), ``close`` those of an event the stream ended in."""

    def __init__(self) -> None:
        self._decoder = _SSEDecoder()
        self.done = False

    def feed(self, chunk: bytes) -> Iterator[Any]:
        return self._payloads(self._decoder.feed(chunk))

    def close(self) -> Iterator[Any]:
        return self._payloads(self._decoder.close())

    def _payloads(self, events: list[tuple[str, str]]) -> Iterator[Any]:
        for event, data in events:
            if self.done:
                return
            payload = _sse_payload(event, data)
            if payload is True:
                self.done = True
                return
            if payload is not None:
                yield payload


def _sse_data(line: str) -> dict[str, Any] | bool | None:
    """One SSE line read as a whole event: a dict for a data event, True at ``[DONE]``, None
    for anything else (blank separators, comments, other fields)."""
    events = _SSEDecoder().feed(line.encode() + b"\n\n")
    return _sse_payload(*events[0]) if events else None


def _retry_notice(
    attempt: int,
    attempts: int,
    wait: float,
    response: httpx.Response | None,
    exc: Exception | None = None,
) -> Notice:
    """What a retry is for, how long it waits: for the caller's notify (or a WARNING)."""
    if response is not None:
        kind = None
        with contextlib.suppress(Exception):
            kind = (response.json().get("error") or {}).get("type")
        reason = f"HTTP {response.status_code}" + (f" {kind}" if kind else "")
        status: int | None = response.status_code
    else:
        reason, status = f"connection: {type(exc).__name__}", None
    return Notice("retry", {"reason": reason, "status": status, "wait_s": round(wait, 2),
                            "attempt": attempt + 1, "attempts": attempts})  # fmt: skip


def _tell(notify: Notify | None, notice: Notice) -> Any:
    """Hand ``notice`` on; without a listener, a retry is still logged."""
    if notify is not None:
        return notify(notice)
    if notice.kind == "retry":
        log.warning("retrying in %.1f s: %s", notice.data["wait_s"], notice.data["reason"])
    return None


async def _atell(notify: Notify | None, notice: Notice) -> None:
    result = _tell(notify, notice)
    if inspect.isawaitable(result):
        await result


async def _close_with_loop(client: httpx.AsyncClient) -> AsyncIterator[None]:
    try:
        while True:
            yield
    finally:
        await client.aclose()


class ServiceClient:
    """The wrapper's HTTP API as seen from the chat model."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float,
        connect_timeout: float,
        max_retries: int,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.timeout = timeout
        self.max_retries = max_retries
        self._headers = {"user-agent": "langchain-vllm-autoscale", **(headers or {})}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._async_transport = async_transport
        self._transport = transport
        self._sync_client: httpx.Client | None = None
        self._sync_lock = threading.Lock()
        self._async: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[httpx.AsyncClient, AsyncIterator[None]]
        ] = weakref.WeakKeyDictionary()

    # -- clients ------------------------------------------------------------------------------

    @classmethod
    def for_model(cls, model: Any) -> ServiceClient:
        """The client of a model class (the chat model, the embeddings): its URL, key,
        time-outs, retries, headers and test transports, read from its fields."""
        return cls(
            model.base_url,
            api_key=model.api_key.get_secret_value() if model.api_key else None,
            timeout=model.timeout,
            connect_timeout=model.connect_timeout,
            max_retries=model.max_retries,
            headers=model.default_headers,
            transport=model.http_transport,
            async_transport=model.http_async_transport,
        )

    @property
    def _sync(self) -> httpx.Client:
        # Built on first use: creating a model stays cheap (an httpx client builds an SSL
        # context).
        if self._sync_client is None:
            with self._sync_lock:  # a warm-up thread and the first call may race here
                if self._sync_client is None:
                    self._sync_client = self._new_sync_client()
        return self._sync_client

    def _new_sync_client(self) -> httpx.Client:
        client = httpx.Client(
            base_url=self.base_url, headers=self._headers, timeout=self._timeout,
            follow_redirects=True, transport=self._transport,
        )  # fmt: skip
        # A model dropped without close() must not leak its sockets.
        weakref.finalize(self, client.close)
        return client

    async def _async_client(self) -> httpx.AsyncClient:
        # httpx's async pool is bound to the loop that opened its connections, so each loop
        # gets its own client.
        loop = asyncio.get_running_loop()
        entry = self._async.get(loop)
        if entry is not None and not entry[0].is_closed:
            return entry[0]
        client = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=self._timeout,
            follow_redirects=True, transport=self._async_transport,
        )  # fmt: skip
        # The loop closes its open async generators before it closes (asyncio.run, pytest):
        # this one closes the client then, so no socket outlives its loop.
        closer = _close_with_loop(client)
        await closer.__anext__()
        self._async[loop] = (client, closer)
        return client

    def close(self) -> None:
        if self._sync_client is not None:
            self._sync_client.close()

    async def aclose(self) -> None:
        entry = self._async.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[0].aclose()

    # -- plain JSON -----------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, notify: Notify | None = None
    ) -> dict[str, Any]:
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                response = self._sync.request(method, path, json=body)
            except httpx.HTTPError as exc:
                if attempt < self.max_retries and _retryable(exc):
                    wait = _backoff(attempt, None)
                    _tell(notify, _retry_notice(attempt, attempts, wait, None, exc))
                    time.sleep(wait)
                    continue
                raise _transport_error(exc, self.timeout) from exc
            if _worth_retrying(response) and attempt < self.max_retries:
                wait = _backoff(attempt, response)
                _tell(notify, _retry_notice(attempt, attempts, wait, response))
                time.sleep(wait)
                continue
            return self._decode(response)
        raise AssertionError("unreachable")

    async def arequest(
        self, method: str, path: str, body: Any = None, notify: Notify | None = None
    ) -> dict[str, Any]:
        client = await self._async_client()
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                response = await client.request(method, path, json=body)
            except httpx.HTTPError as exc:
                if attempt < self.max_retries and _retryable(exc):
                    wait = _backoff(attempt, None)
                    await _atell(notify, _retry_notice(attempt, attempts, wait, None, exc))
                    await asyncio.sleep(wait)
                    continue
                raise _transport_error(exc, self.timeout) from exc
            if _worth_retrying(response) and attempt < self.max_retries:
                wait = _backoff(attempt, response)
                await _atell(notify, _retry_notice(attempt, attempts, wait, response))
                await asyncio.sleep(wait)
                continue
            return self._decode(response)
        raise AssertionError("unreachable")

    def request_quick(
        self, method: str, path: str, body: Any = None, *, timeout: float
    ) -> dict[str, Any]:
        """One attempt with a short time-out, for routes that never wait on the GPU
        (``/v1/models``, ``/tokenize``): a slow or absent service fails fast instead of
        being retried for minutes like a cold start."""
        limit = httpx.Timeout(timeout, connect=min(timeout, self._timeout.connect or timeout))
        try:
            response = self._sync.request(method, path, json=body, timeout=limit)
        except httpx.TimeoutException as exc:  # not a cold start: this route never waits on one
            raise APITimeoutError(
                f"{method} {path}: no answer within {timeout:g} s ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise _transport_error(exc, timeout) from exc
        return self._decode(response)

    @staticmethod
    def _decode(response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise _error(response, response.content)
        try:
            return response.json()
        except ValueError as exc:
            raise error_from_response(
                502, f"the service answered with non-JSON: {response.text[:200]!r}"
            ) from exc

    # -- server-sent events ---------------------------------------------------------------------

    def stream(
        self, path: str, body: Any, notify: Notify | None = None
    ) -> Iterator[dict[str, Any]]:
        """POST and yield each SSE data event; retries only before the first byte arrives.
        Progress comments and retries go to ``notify``."""
        yielded = False
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                with self._sync.stream("POST", path, json=body) as response:
                    if response.status_code >= 400:
                        content = response.read()
                        if _worth_retrying(response) and attempt < self.max_retries:
                            wait = _backoff(attempt, response)
                            _tell(notify, _retry_notice(attempt, attempts, wait, response))
                            time.sleep(wait)
                            continue
                        raise _error(response, content)
                    events = _SSEStream()
                    for chunk in response.iter_bytes():
                        for payload in events.feed(chunk):
                            if isinstance(payload, Notice):
                                _tell(notify, payload)
                                continue
                            yielded = True
                            yield payload
                        if events.done:
                            return
                    yield from (p for p in events.close() if not isinstance(p, Notice))
                    return
            except httpx.HTTPError as exc:
                # Once output was handed out, sending again would repeat it: fail instead.
                if attempt < self.max_retries and _retryable(exc) and not yielded:
                    wait = _backoff(attempt, None)
                    _tell(notify, _retry_notice(attempt, attempts, wait, None, exc))
                    time.sleep(wait)
                    continue
                raise _transport_error(exc, self.timeout) from exc

    async def astream(
        self, path: str, body: Any, notify: Notify | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        client = await self._async_client()
        yielded = False
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                async with client.stream("POST", path, json=body) as response:
                    if response.status_code >= 400:
                        content = await response.aread()
                        if _worth_retrying(response) and attempt < self.max_retries:
                            wait = _backoff(attempt, response)
                            await _atell(notify, _retry_notice(attempt, attempts, wait, response))
                            await asyncio.sleep(wait)
                            continue
                        raise _error(response, content)
                    events = _SSEStream()
                    async for chunk in response.aiter_bytes():
                        for payload in events.feed(chunk):
                            if isinstance(payload, Notice):
                                await _atell(notify, payload)
                                continue
                            yielded = True
                            yield payload
                        if events.done:
                            return
                    for payload in events.close():
                        if not isinstance(payload, Notice):
                            yield payload
                    return
            except httpx.HTTPError as exc:
                # Once output was handed out, sending again would repeat it: fail instead.
                if attempt < self.max_retries and _retryable(exc) and not yielded:
                    wait = _backoff(attempt, None)
                    await _atell(notify, _retry_notice(attempt, attempts, wait, None, exc))
                    await asyncio.sleep(wait)
                    continue
                raise _transport_error(exc, self.timeout) from exc
