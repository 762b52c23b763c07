"""``ServiceClient`` over ``httpx.MockTransport``: retries, back-off, errors and SSE parsing.

Sleeps are recorded instead of slept, so every retry test runs in milliseconds. Each behaviour
is checked for the sync and the async client (``mode``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from langchain_vllm_autoscale import _http
from langchain_vllm_autoscale._exceptions import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ContextLengthError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    VLLMAutoscaleError,
)
from langchain_vllm_autoscale._http import ServiceClient

API_KEY = "sk-unit-test-secret-0123456789"
BASE_URL = "http://wrapper.test"
OK_BODY = {"id": "chatcmpl-1", "choices": [{"message": {"content": "hi"}}]}

Step = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Script:
    """A MockTransport handler that answers with the given steps in order and records requests."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert self.steps, f"unexpected extra request {request.method} {request.url}"
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        if isinstance(step, httpx.Response):
            return step
        return step(request)


def error_json(status: int, message: str, **headers: str) -> httpx.Response:
    body = {"error": {"message": message, "type": "x", "param": None, "code": status}}
    return httpx.Response(status, json=body, headers=headers)


def sse(*lines: str) -> httpx.Response:
    text = "".join(line + "\n" for line in lines)
    return httpx.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})


def data(payload: dict[str, Any]) -> str:
    return "data: " + json.dumps(payload) + "\n"


class _AsyncioWithRecordedSleep:
    """``asyncio`` as ``_http`` sees it, with ``sleep`` recording instead of waiting."""

    def __init__(self, delays: list[float]) -> None:
        self._delays = delays

    async def sleep(self, delay: float) -> None:
        self._delays.append(delay)

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every back-off delay ``_http`` asks for, in order; nothing actually sleeps.

    Jitter is pinned to its top (factor 1.0), so delays without ``Retry-After`` are exact.
    """
    delays: list[float] = []
    monkeypatch.setattr(_http, "time", SimpleNamespace(sleep=delays.append))
    monkeypatch.setattr(_http, "asyncio", _AsyncioWithRecordedSleep(delays))
    monkeypatch.setattr(_http, "random", SimpleNamespace(random=lambda: 1.0))
    return delays


def make_client(script: Script, *, max_retries: int = 3, **kwargs: Any) -> ServiceClient:
    transport = httpx.MockTransport(script)
    options: dict[str, Any] = {
        "api_key": API_KEY,
        "timeout": 7.0,
        "connect_timeout": 1.0,
        "max_retries": max_retries,
        "transport": transport,
        "async_transport": transport,
    }
    return ServiceClient(BASE_URL + "/", **(options | kwargs))


def do_request(
    client: ServiceClient, mode: str, method: str = "POST", path: str = "/v1/x", body: Any = None
) -> dict[str, Any]:
    if mode == "sync":
        return client.request(method, path, body)
    return asyncio.run(client.arequest(method, path, body))


def do_stream(
    client: ServiceClient, mode: str, into: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Collect the stream's events into ``into`` (kept when the stream raises)."""
    events = [] if into is None else into
    body = {"stream": True}
    if mode == "sync":
        events.extend(client.stream("/v1/chat/completions", body))
        return events

    async def consume() -> None:
        async for item in client.astream("/v1/chat/completions", body):
            events.append(item)

    asyncio.run(consume())
    return events


MODES = pytest.mark.parametrize("mode", ["sync", "async"])


# -- back-off -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("2", 2.0),
        ("0.25", 0.25),
        ("0", 0.0),
        ("-5", 0.0),
        ("1000", 60.0),  # capped at twice the longest exponential back-off
    ],
)
def test_retry_after_seconds_are_honoured(header: str, expected: float) -> None:
    response = httpx.Response(503, headers={"Retry-After": header})
    assert _http._backoff(0, response) == expected
    assert _http._backoff(5, response) == expected  # the hint wins over the attempt number


@pytest.mark.parametrize("header", [None, "", "soon", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_unusable_retry_after_falls_back_to_exponential(
    header: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_http, "random", SimpleNamespace(random=lambda: 1.0))
    headers = {} if header is None else {"Retry-After": header}
    response = httpx.Response(503, headers=headers)
    assert [_http._backoff(n, response) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]


@pytest.mark.parametrize(("jitter", "factor"), [(0.0, 0.5), (0.5, 0.75), (1.0, 1.0)])
def test_exponential_backoff_jitter_and_cap(
    jitter: float, factor: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_http, "random", SimpleNamespace(random=lambda: jitter))
    assert _http._backoff(2, None) == pytest.approx(2.0 * factor)
    assert _http._backoff(20, None) == pytest.approx(30.0 * factor)  # capped at 30 s


# -- retries of plain requests --------------------------------------------------------------------


@MODES
@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retries_retryable_status_honouring_retry_after(
    status: int, mode: str, sleeps: list[float]
) -> None:
    script = Script(
        error_json(status, "cold start", **{"Retry-After": "3"}),
        error_json(status, "still starting", **{"Retry-After": "1.5"}),
        httpx.Response(200, json=OK_BODY),
    )
    assert do_request(make_client(script), mode) == OK_BODY
    assert len(script.requests) == 3
    assert sleeps == [3.0, 1.5]


@MODES
@pytest.mark.parametrize(
    ("status", "cls"),
    [(429, RateLimitError), (502, ServiceUnavailableError), (503, ServiceUnavailableError),
     (504, ServiceUnavailableError)],
)  # fmt: skip
def test_gives_up_after_max_retries(
    status: int, cls: type[VLLMAutoscaleError], mode: str, sleeps: list[float]
) -> None:
    script = Script(*[error_json(status, f"busy {n}") for n in range(4)])
    with pytest.raises(cls) as info:
        do_request(make_client(script, max_retries=3), mode)
    assert len(script.requests) == 4  # one try and three retries
    assert sleeps == [0.5, 1.0, 2.0]  # no Retry-After: exponential back-off
    assert info.value.status_code == status
    assert info.value.message == "busy 3"  # the last answer's error


@MODES
def test_max_retries_zero_tries_once(mode: str, sleeps: list[float]) -> None:
    script = Script(error_json(503, "down", **{"Retry-After": "1"}))
    with pytest.raises(ServiceUnavailableError):
        do_request(make_client(script, max_retries=0), mode)
    assert len(script.requests) == 1
    assert sleeps == []


@MODES
@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (422, BadRequestError),
        (500, ServiceUnavailableError),
    ],
)
def test_does_not_retry_other_errors(
    status: int, cls: type[VLLMAutoscaleError], mode: str, sleeps: list[float]
) -> None:
    script = Script(error_json(status, "nope", **{"Retry-After": "1"}))
    with pytest.raises(cls) as info:
        do_request(make_client(script), mode)
    assert type(info.value) is cls
    assert len(script.requests) == 1
    assert sleeps == []
    assert info.value.message == "nope" and info.value.status_code == status


@MODES
@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ConnectTimeout("timed out connecting"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
    ids=["connect-error", "connect-timeout", "remote-protocol-error"],
)
def test_retries_failed_connections(exc: Exception, mode: str, sleeps: list[float]) -> None:
    script = Script(exc, exc, httpx.Response(200, json=OK_BODY))
    assert do_request(make_client(script), mode) == OK_BODY
    assert len(script.requests) == 3
    assert sleeps == [0.5, 1.0]


@MODES
def test_connection_errors_give_up_as_api_connection_error(mode: str, sleeps: list[float]) -> None:
    exc = httpx.ConnectError("[Errno 111] Connection refused")
    script = Script(exc, exc, exc)
    with pytest.raises(APIConnectionError, match="cannot reach the service") as info:
        do_request(make_client(script, max_retries=2), mode)
    assert len(script.requests) == 3
    assert sleeps == [0.5, 1.0]
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert info.value.is_retryable


@MODES
def test_connect_timeout_gives_up_as_timeout(mode: str, sleeps: list[float]) -> None:
    exc = httpx.ConnectTimeout("timed out")
    script = Script(exc, exc)
    with pytest.raises(APITimeoutError):
        do_request(make_client(script, max_retries=1), mode)
    assert len(script.requests) == 2


@MODES
def test_read_timeout_is_not_retried(mode: str, sleeps: list[float]) -> None:
    # The request reached the engine: sending it again could run it twice.
    script = Script(httpx.ReadTimeout("timed out"))
    with pytest.raises(APITimeoutError) as info:
        do_request(make_client(script), mode)
    assert len(script.requests) == 1
    assert sleeps == []
    assert "7 s" in str(info.value) and "warmup()" in str(info.value)


@MODES
def test_retry_resends_the_same_request(mode: str, sleeps: list[float]) -> None:
    script = Script(error_json(503, "x"), httpx.Response(200, json=OK_BODY))
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    do_request(make_client(script), mode, "POST", "/v1/chat/completions", body)
    first, second = script.requests
    assert first.method == second.method == "POST"
    assert first.url == second.url == httpx.URL(BASE_URL + "/v1/chat/completions")
    assert json.loads(first.content) == json.loads(second.content) == body


# -- requests and answers -------------------------------------------------------------------------


@MODES
def test_headers_and_body(mode: str) -> None:
    script = Script(httpx.Response(200, json={"state": "warm"}))
    client = make_client(script, headers={"x-team": "search"})
    assert do_request(client, mode, "GET", "/status") == {"state": "warm"}
    (request,) = script.requests
    assert request.url == httpx.URL(BASE_URL + "/status")  # trailing slash of base_url dropped
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["user-agent"] == "langchain-vllm-autoscale"
    assert request.headers["x-team"] == "search"


def test_no_api_key_sends_no_authorization() -> None:
    script = Script(httpx.Response(200, json={}))
    make_client(script, api_key=None).request("GET", "/status")
    assert "authorization" not in script.requests[0].headers


@MODES
def test_redirect_is_followed(mode: str) -> None:
    # Modal answers a request that runs longer than 150 s with a 303 to poll.
    script = Script(
        httpx.Response(303, headers={"location": "/result/abc"}),
        httpx.Response(200, json=OK_BODY),
    )
    assert do_request(make_client(script), mode) == OK_BODY
    assert [r.url.path for r in script.requests] == ["/v1/x", "/result/abc"]


@MODES
def test_request_id_header_reaches_the_error(mode: str) -> None:
    script = Script(error_json(400, "bad temperature", **{"x-request-id": "req-42"}))
    with pytest.raises(BadRequestError) as info:
        do_request(make_client(script), mode)
    assert info.value.request_id == "req-42"
    assert str(info.value) == "bad temperature (HTTP 400, request id req-42)"


@MODES
def test_context_overflow_error(mode: str) -> None:
    script = Script(error_json(400, "This model's maximum context length is 2048 tokens."))
    with pytest.raises(ContextLengthError):
        do_request(make_client(script), mode)


@MODES
def test_non_json_error_body_keeps_its_text(mode: str, sleeps: list[float]) -> None:
    page = "<html><body>502 Bad Gateway</body></html>"
    script = Script(httpx.Response(502, text=page))
    with pytest.raises(ServiceUnavailableError) as info:
        do_request(make_client(script, max_retries=0), mode)
    assert info.value.message == page
    assert info.value.body == page


@MODES
def test_non_json_success_is_a_clear_error(mode: str) -> None:
    script = Script(httpx.Response(200, text="<html>login page</html>"))
    with pytest.raises(ServiceUnavailableError, match="non-JSON") as info:
        do_request(make_client(script), mode)
    assert info.value.status_code == 502
    assert "login page" in info.value.message


@MODES
@pytest.mark.parametrize(
    "step",
    [
        # Answers are built per request: a response object is read only once.
        lambda _: error_json(401, "invalid API key"),
        lambda _: httpx.Response(500, text="Internal Server Error"),
        lambda _: httpx.Response(200, text="not json"),
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadTimeout("timed out"),
    ],
    ids=["401", "500-text", "200-text", "connect-error", "read-timeout"],
)
def test_api_key_never_appears_in_errors(step: Step, mode: str, sleeps: list[float]) -> None:
    script = Script(step)
    with pytest.raises(VLLMAutoscaleError) as info:
        do_request(make_client(script, max_retries=0), mode)
    # The key was sent ...
    assert script.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    # ... but no error text carries it.
    err = info.value
    for text in (str(err), repr(err), err.message, str(err.body)):
        assert API_KEY not in text


# -- SSE parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line", ["", ": keep-alive", ":", "event: message", "id: 7", "retry: 1000", "garbage"]
)
def test_sse_lines_without_data_are_skipped(line: str) -> None:
    assert _http._sse_data(line) is None


@pytest.mark.parametrize("line", ["data: [DONE]", "data:[DONE]", "data:  [DONE]  "])
def test_sse_done(line: str) -> None:
    assert _http._sse_data(line) is True


@pytest.mark.parametrize("line", ['data: {"a": 1}', 'data:{"a": 1}'])
def test_sse_data_event(line: str) -> None:
    assert _http._sse_data(line) == {"a": 1}


def test_sse_error_with_choices_is_an_ordinary_event() -> None:
    payload = {"choices": [{"delta": {"content": "x"}}], "error": None}
    assert _http._sse_data(data(payload).strip()) == payload


@pytest.mark.parametrize(
    ("error", "cls", "status"),
    [
        ({"message": "engine died", "code": 503}, ServiceUnavailableError, 503),
        ({"message": "engine died"}, ServiceUnavailableError, 503),  # no code: 503
        ({"message": "bad request", "code": 400}, BadRequestError, 400),
        ({"message": "maximum context length is 2048", "code": 400}, ContextLengthError, 400),
        ({"message": "slow down", "code": "429"}, RateLimitError, 429),
    ],
)
def test_sse_error_event_raises(error: dict[str, Any], cls: type[Exception], status: int) -> None:
    with pytest.raises(cls) as info:
        _http._sse_data(data({"error": error}).strip())
    assert type(info.value) is cls
    assert isinstance(info.value, VLLMAutoscaleError)
    assert info.value.status_code == status
    assert info.value.message == error["message"]


@pytest.mark.parametrize(
    "line",
    [
        data({"error": {"message": "too long", "code": "context_length_exceeded"}}).strip(),
        data({"error": "engine crashed"}).strip(),
        "data: <html>502 Bad Gateway</html>",
    ],
    ids=["string-code", "string-error", "non-json-data"],
)
def test_malformed_sse_error_is_still_a_client_error(line: str) -> None:
    with pytest.raises(VLLMAutoscaleError):
        _http._sse_data(line)


# -- streaming through the mock transport ---------------------------------------------------------

CHUNK_1 = {"id": "s", "choices": [{"index": 0, "delta": {"content": "Bon"}}]}
CHUNK_2 = {"id": "s", "choices": [{"index": 0, "delta": {"content": "jour"}}]}
USAGE = {"id": "s", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}


@MODES
def test_stream_skips_keep_alives_and_stops_at_done(mode: str) -> None:
    script = Script(
        sse(
            ": keep-alive",
            "",
            ": keep-alive",
            "",
            data(CHUNK_1),
            "event: message",
            data(CHUNK_2),
            data(USAGE),
            "data: [DONE]",
            "",
            data({"id": "after-done"}),  # nothing after [DONE] is read
        )
    )
    client = make_client(script)
    assert do_stream(client, mode) == [CHUNK_1, CHUNK_2, USAGE]
    (request,) = script.requests
    assert request.method == "POST"
    assert json.loads(request.content) == {"stream": True}


@MODES
def test_stream_ending_without_done_returns_what_came(mode: str) -> None:
    script = Script(sse(data(CHUNK_1)))
    assert do_stream(make_client(script), mode) == [CHUNK_1]


@MODES
def test_stream_error_event_mid_stream(mode: str, sleeps: list[float]) -> None:
    error = {
        "error": {
            "message": "the engine process exited (code 1)",
            "type": "engine_unavailable",
            "param": None,
            "code": 503,
        }
    }
    script = Script(sse(": keep-alive", "", data(CHUNK_1), data(error), "data: [DONE]"))
    got: list[dict[str, Any]] = []
    with pytest.raises(ServiceUnavailableError, match="engine process exited"):
        do_stream(make_client(script), mode, got)
    assert got == [CHUNK_1]
    assert len(script.requests) == 1  # output was handed out: no retry
    assert sleeps == []


@MODES
@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_stream_retries_before_the_first_byte(status: int, mode: str, sleeps: list[float]) -> None:
    script = Script(
        error_json(status, "queue full", **{"Retry-After": "4"}),
        sse(data(CHUNK_1), "data: [DONE]"),
    )
    assert do_stream(make_client(script), mode) == [CHUNK_1]
    assert len(script.requests) == 2
    assert sleeps == [4.0]


@MODES
def test_stream_gives_up_after_max_retries(mode: str, sleeps: list[float]) -> None:
    script = Script(*[error_json(503, "down") for _ in range(3)])
    with pytest.raises(ServiceUnavailableError, match="down"):
        do_stream(make_client(script, max_retries=2), mode)
    assert len(script.requests) == 3
    assert sleeps == [0.5, 1.0]


@MODES
@pytest.mark.parametrize(
    ("status", "cls"), [(400, BadRequestError), (401, AuthenticationError), (404, NotFoundError)]
)
def test_stream_does_not_retry_client_errors(
    status: int, cls: type[VLLMAutoscaleError], mode: str, sleeps: list[float]
) -> None:
    script = Script(error_json(status, "rejected", **{"x-request-id": "r-9"}))
    with pytest.raises(cls) as info:
        do_stream(make_client(script), mode)
    assert info.value.message == "rejected" and info.value.request_id == "r-9"
    assert len(script.requests) == 1
    assert sleeps == []


@MODES
def test_stream_retries_failed_connections(mode: str, sleeps: list[float]) -> None:
    script = Script(
        httpx.ConnectError("refused"),
        sse(data(CHUNK_1), "data: [DONE]"),
    )
    assert do_stream(make_client(script), mode) == [CHUNK_1]
    assert len(script.requests) == 2
    assert sleeps == [0.5]


class _DropsAfterFirstEvent(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that sends one event, then loses the connection."""

    def __iter__(self) -> Iterator[bytes]:
        yield data(CHUNK_1).encode() + b"\n"
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield data(CHUNK_1).encode() + b"\n"
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


@MODES
def test_stream_is_not_resent_after_output_was_handed_out(mode: str, sleeps: list[float]) -> None:
    script = Script(httpx.Response(200, stream=_DropsAfterFirstEvent()))
    got: list[dict[str, Any]] = []
    with pytest.raises(APIConnectionError, match="peer closed"):
        do_stream(make_client(script), mode, got)
    assert got == [CHUNK_1]
    assert len(script.requests) == 1  # sending again would repeat the text
    assert sleeps == []


# -- client lifecycle -----------------------------------------------------------------------------


def test_sync_client_is_built_once_and_closed() -> None:
    script = Script(httpx.Response(200, json={}), httpx.Response(200, json={}))
    client = make_client(script)
    assert client._sync_client is None  # nothing built until the first request
    client.request("GET", "/status")
    built = client._sync_client
    client.request("GET", "/status")
    assert client._sync_client is built
    assert built is not None and not built.is_closed
    client.close()
    assert built.is_closed


def test_async_client_per_loop_is_closed_with_its_loop() -> None:
    script = Script(httpx.Response(200, json={}), httpx.Response(200, json={}))
    client = make_client(script)

    async def call() -> httpx.AsyncClient:
        await client.arequest("GET", "/status")
        return await client._async_client()

    first = asyncio.run(call())
    assert first.is_closed  # closed when its loop shut down
    second = asyncio.run(call())
    assert second is not first and second.is_closed
    assert len(script.requests) == 2


async def test_aclose_closes_the_loops_client() -> None:
    script = Script(httpx.Response(200, json={}), httpx.Response(200, json={}))
    client = make_client(script)
    await client.arequest("GET", "/status")
    built = await client._async_client()
    assert await client._async_client() is built  # reused within one loop
    await client.aclose()
    assert built.is_closed
    # The next call builds a fresh client.
    await client.arequest("GET", "/status")
    assert await client._async_client() is not built
    await client.aclose()


@MODES
def test_a_retry_after_past_the_longest_back_off_is_not_waited_for(
    mode: str, sleeps: list[float]
) -> None:
    """A key out of its monthly budget hears 429 with Retry-After in days: the error comes
    at once, not after retries that each sleep a minute."""
    script = Script(
        error_json(429, "key 'team' is over its monthly budget", **{"Retry-After": "86400"}),
        httpx.Response(200, json=OK_BODY),
    )
    with pytest.raises(RateLimitError) as info:
        do_request(make_client(script), mode)
    assert len(script.requests) == 1 and sleeps == []
    assert "monthly budget" in info.value.message


@MODES
def test_a_stream_refused_for_days_is_not_retried(mode: str, sleeps: list[float]) -> None:
    script = Script(
        error_json(429, "over budget", **{"Retry-After": str(40 * 86400)}),
        sse(data({"choices": []}), "data: [DONE]"),
    )
    with pytest.raises(RateLimitError):
        do_stream(make_client(script), mode)
    assert len(script.requests) == 1 and sleeps == []


def test_threads_racing_to_the_first_request_share_one_client(monkeypatch) -> None:
    """A warm-up thread and the user's first call build the client at the same moment."""
    import threading
    import time as real_time

    built: list[object] = []
    real = httpx.Client

    class SlowClient(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            real_time.sleep(0.05)  # widen the window a race needs
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(_http.httpx, "Client", SlowClient)
    client = make_client(Script())
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(client._sync)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and all(c is built[0] for c in seen)
