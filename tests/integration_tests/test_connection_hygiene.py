"""Connection hygiene, live: a wrapper served as ``LocalStack`` serves it (``server_config``),
with short time-outs and a small connection cap, over the session's engine. Idle, half-sent
and slow-body sockets are closed by the server while real requests are served, and
connections over the cap get a JSON 503 and are closed, after which ``/health`` answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import selectors
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deploy.ops.local_stack import LocalStack
from deploy.settings.settings import Settings
from deploy.wrapper import create_app
from tests.integration_tests.conftest import API_KEY, serve_on_stack

TIMEOUT = 1.0  # header, keep-alive and body time-outs of the wrapper under test
CAP = 50
LATE = 1.5  # how late after its time-out a socket may be closed (a loaded 2-core machine)
AUTH = {"authorization": f"Bearer {API_KEY}"}
CHAT = {"messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 2}
GET_HEALTH = b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n"


@contextlib.contextmanager
def serve_guarded(
    stack: LocalStack, settings: Settings, wrap: Callable[[ASGIApp], ASGIApp] | None = None
) -> Iterator[tuple[str, int]]:
    """A second wrapper app on the stack's loop, on the wrapper's own server config (its
    protocol, time-outs and cap). Yields its URL and port."""
    app: ASGIApp = create_app(stack.transport, settings)
    with serve_on_stack(stack, wrap(app) if wrap is not None else app, settings) as url:
        yield url, int(url.rsplit(":", 1)[1])


SETTINGS = Settings(
    wrapper_api_key=SecretStr(API_KEY),
    heartbeat_interval=2.0,
    header_timeout=TIMEOUT,
    keepalive_timeout=TIMEOUT,
    body_timeout=TIMEOUT,
    max_connections=CAP,
)


@pytest.fixture
def guarded(warm_stack: LocalStack) -> Iterator[tuple[str, int]]:
    with serve_guarded(warm_stack, SETTINGS) as served:
        yield served


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_response(sock: socket.socket, limit: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a content-length body: (status, headers, body)."""
    sock.settimeout(limit)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _normal_requests(url: str) -> list[int]:
    """/health and a 2-token chat completion, each on a fresh connection."""
    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as client:
        return [
            client.get("/health").status_code,
            client.post("/v1/chat/completions", json=CHAT).status_code,
        ]


class Watched:
    """A client socket whose closing by the server is timed (from ``since``)."""

    def __init__(self, name: str, sock: socket.socket, since: float) -> None:
        self.name, self.sock, self.since = name, sock, since
        self.received = b""
        self.closed_after: float | None = None
        sock.setblocking(False)


def _watch(watched: list[Watched], limit: float, trickle: Watched | None = None) -> None:
    """Until every socket is closed by the server (or ``limit``); one byte a quarter second
    on ``trickle`` meanwhile (a 4 bytes/s body)."""
    selector = selectors.DefaultSelector()
    for w in watched:
        selector.register(w.sock, selectors.EVENT_READ, w)
    deadline = time.monotonic() + limit
    next_byte = time.monotonic()
    open_count = len(watched)
    while open_count and time.monotonic() < deadline:
        if trickle is not None and trickle.closed_after is None and time.monotonic() >= next_byte:
            with contextlib.suppress(OSError):  # the server may have closed it just now
                trickle.sock.send(b"x")
            next_byte += 0.25
        for key, _ in selector.select(timeout=0.02):
            w = key.data
            try:
                chunk = w.sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            if chunk:
                w.received += chunk
                continue
            w.closed_after = time.monotonic() - w.since
            selector.unregister(w.sock)
            open_count -= 1
    selector.close()


def test_idle_half_sent_and_slow_sockets_are_closed_while_requests_are_served(
    guarded: tuple[str, int],
) -> None:
    url, port = guarded
    watched: list[Watched] = []
    try:
        for i in range(40):  # connected, nothing sent
            watched.append(Watched(f"idle-{i}", _connect(port), time.monotonic()))
        half = _connect(port)  # half the headers, never the rest
        half.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n")
        watched.append(Watched("half-headers", half, time.monotonic()))
        kept = _connect(port)  # one request, then idle on keep-alive
        kept.sendall(GET_HEALTH)
        assert _read_response(kept)[0] == 200
        watched.append(Watched("keep-alive", kept, time.monotonic()))
        slow = _connect(port)  # a body at 4 bytes/s
        slow.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\ncontent-type: "
            b"application/json\r\nauthorization: Bearer " + API_KEY.encode() + b"\r\n"
            b"content-length: 1000\r\n\r\n"
        )
        trickle = Watched("slow-body", slow, time.monotonic())
        watched.append(trickle)

        with ThreadPoolExecutor(1) as pool:
            during = pool.submit(_normal_requests, url)  # served meanwhile
            _watch(watched, limit=TIMEOUT + LATE + 3, trickle=trickle)
            assert during.result() == [200, 200]

        times = {w.name: w.closed_after for w in watched}
        still_open = [name for name, t in times.items() if t is None]
        assert not still_open, still_open
        idle = sorted(t for name, t in times.items() if name.startswith("idle-") and t)
        print(
            f"\nclosed after (s): idle x40 min {idle[0]:.2f} max {idle[-1]:.2f}; "
            + ", ".join(f"{n} {t:.2f}" for n, t in times.items() if not n.startswith("idle-"))
        )
        for name, elapsed in times.items():  # (keep-alive's clock started before ours)
            assert elapsed is not None and TIMEOUT - 0.25 <= elapsed < TIMEOUT + LATE, name
        by_name = {w.name: w for w in watched}
        assert by_name["idle-0"].received == b""  # closed silently
        assert by_name["half-headers"].received == b""
        head, _, body = by_name["slow-body"].received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), by_name["slow-body"].received
        assert json.loads(body)["error"]["code"] == 408
    finally:
        for w in watched:
            w.sock.close()
    assert _normal_requests(url) == [200, 200]  # and after


def test_connections_over_the_cap_get_503_and_health_answers_once_they_are_gone(
    guarded: tuple[str, int],
) -> None:
    url, port = guarded
    socks = [_connect(port) for _ in range(CAP + 10)]
    try:
        time.sleep(0.3)  # the server has accepted them all (in order)
        for sock in socks:
            sock.sendall(GET_HEALTH)
        responses = [_read_response(sock) for sock in socks]
        statuses = Counter(status for status, _, _ in responses)
        assert statuses == {200: CAP, 503: 10}, statuses

        # While the cap's worth are held (on keep-alive), a new client is shed cleanly.
        shed = httpx.get(url + "/health", timeout=10)
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "1"
        assert shed.json() == {
            "error": {
                "message": "The server has too many open connections; retry shortly.",
                "type": "overloaded",
                "param": None,
                "code": 503,
            }
        }
        # The rejected ones were closed at once, the others at their keep-alive time-out.
        rejected = [s for s, (status, _, _) in zip(socks, responses, strict=True) if status == 503]
        started = time.monotonic()
        gone = [Watched(f"r{i}", s, started) for i, s in enumerate(rejected)]
        _watch(gone, limit=1.0)
        assert all(w.closed_after is not None and w.closed_after < 0.5 for w in gone)
        held = [s for s, (status, _, _) in zip(socks, responses, strict=True) if status == 200]
        kept = [Watched(f"h{i}", s, started) for i, s in enumerate(held)]
        _watch(kept, limit=TIMEOUT + LATE + 2)
        assert all(w.closed_after is not None for w in kept)
        print(
            f"\nover the cap: {statuses[503]} x 503, closed within "
            f"{max(w.closed_after or 0 for w in gone):.3f} s; the {CAP} held ones closed by "
            f"keep-alive within {max(w.closed_after or 0 for w in kept):.2f} s"
        )
    finally:
        for sock in socks:
            sock.close()
    assert _normal_requests(url) == [200, 200]


def _slowed(app: ASGIApp) -> ASGIApp:
    """The wrapper, but each inference request first waits 2.5 s (as for a cold engine) and
    each chunk of its answer 0.3 s later: both outlast every time-out (1 s)."""

    async def slowed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await app(scope, receive, send)
            return

        async def slow_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                await asyncio.sleep(0.3)
            await send(message)

        await asyncio.sleep(2.5)
        await app(scope, receive, slow_send)

    return slowed


def test_a_long_wait_and_a_long_stream_are_not_cut(warm_stack: LocalStack) -> None:
    with serve_guarded(warm_stack, SETTINGS, wrap=_slowed) as (url, _):
        started = time.monotonic()
        body = {**CHAT, "max_tokens": 6, "stream": True}
        with (
            httpx.Client(base_url=url, headers=AUTH, timeout=120) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as resp,
        ):
            assert resp.status_code == 200
            lines = [line for line in resp.iter_lines() if line]
        elapsed = time.monotonic() - started
    print(f"\nslow start + stream: {len(lines)} SSE lines over {elapsed:.1f} s, not cut")
    assert lines[-1] == "data: [DONE]"
    assert elapsed > 2.5 + 3 * 0.3 > 3 * TIMEOUT
