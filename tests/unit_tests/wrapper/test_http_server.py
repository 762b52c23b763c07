"""The wrapper's HTTP protocol, offline: its header, keep-alive and body deadlines, its head
size cap and its connection cap, driven through uvicorn's protocol interface with a fake
transport (and the head cap once more over a real socket)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.config import Config
from uvicorn.server import ServerState

from deploy.settings.settings import Settings
from deploy.wrapper import http_server
from deploy.wrapper.http_server import (
    GuardedConfig,
    GuardedHttpToolsProtocol,
    HttpLimits,
    default_backlog,
    default_max_connections,
    server_config,
)

T = 0.15  # every time-out in these tests, in seconds
SLACK = 1.0  # a loaded 2-core machine runs timers late


class FakeTransport:
    """What uvicorn's protocol uses of an asyncio transport; records what it is sent."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.protocol: GuardedHttpToolsProtocol | None = None
        self.written = bytearray()
        self.closed_at: float | None = None
        self.aborted = False
        self.read_paused = False
        self.buffered = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        assert self.closed_at is None, "write after close"
        self.written += data

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closed_at is not None

    def close(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()
            assert self.protocol is not None
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        self.read_paused = False


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole body, answers 200 with its length."""
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Server:
    """What a server's connections share: its config (and reject count) and its state."""

    def __init__(self, app: Any, limits: HttpLimits) -> None:
        self.app, self.limits = app, limits
        self.config = GuardedConfig(app, limits=limits, log_config=None, lifespan="off")
        self.state = ServerState()

    def connect(self) -> Conn:
        return Conn(self.app, self.limits, self)


class Conn:
    """One connection: a protocol instance over a fake transport."""

    def __init__(self, app: Any, limits: HttpLimits, server: Server | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        server = server or Server(app, limits)
        config, self.state = server.config, server.state
        self.protocol = GuardedHttpToolsProtocol(
            config=config, server_state=self.state, app_state={}, _loop=self.loop
        )
        self.transport = FakeTransport(self.loop)
        self.transport.protocol = self.protocol
        self.opened = time.monotonic()
        self.protocol.connection_made(self.transport)  # type: ignore[arg-type]

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)

    @property
    def closed(self) -> bool:
        return self.transport.closed_at is not None

    async def wait_closed(self, limit: float = 3.0) -> float:
        """Seconds from opening until the server closed the connection."""
        deadline = time.monotonic() + limit
        while not self.closed:
            assert time.monotonic() < deadline, "the server never closed the connection"
            await asyncio.sleep(0.005)
        assert self.transport.closed_at is not None
        await asyncio.sleep(0)  # let connection_lost run
        return self.transport.closed_at - self.opened

    async def wait_written(self, marker: bytes, limit: float = 3.0) -> None:
        deadline = time.monotonic() + limit
        while marker not in self.transport.written:
            assert time.monotonic() < deadline, bytes(self.transport.written)
            await asyncio.sleep(0.005)


def limits(**overrides: Any) -> HttpLimits:
    values: dict[str, Any] = {
        "header_timeout": T,
        "keepalive_timeout": T,
        "body_timeout": T,
        "max_connections": 100,
    }
    return HttpLimits(**{**values, **overrides})


GET = b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n"
CAP = 64 * 1024  # the default VLLM_MAX_HEADER_BYTES


def post_head(length: int, extra: bytes = b"") -> bytes:
    return b"POST /v1/x HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n%s\r\n" % (length, extra)


# -- settings and configuration ---------------------------------------------------------------


def test_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert (settings.header_timeout, settings.keepalive_timeout, settings.body_timeout) == (
        10.0,
        5.0,
        30.0,
    )
    assert settings.max_connections is None
    monkeypatch.setenv("VLLM_HEADER_TIMEOUT", "2.5")
    monkeypatch.setenv("VLLM_MAX_CONNECTIONS", "77")
    env = Settings()
    limits = HttpLimits.from_settings(env)
    assert (limits.header_timeout, limits.max_connections) == (2.5, 77)
    assert {"VLLM_HEADER_TIMEOUT", "VLLM_BODY_TIMEOUT", "VLLM_MAX_CONNECTIONS"} <= (
        Settings.env_names()
    )


@pytest.mark.parametrize(
    ("soft", "expected"), [(1024, 512), (20_000, 10_000), (100, 50), (None, 10_000)]
)
def test_default_max_connections_leaves_half_the_descriptors(
    monkeypatch: pytest.MonkeyPatch, soft: int | None, expected: int
) -> None:
    import resource

    value = resource.RLIM_INFINITY if soft is None else soft
    monkeypatch.setattr(resource, "getrlimit", lambda _: (value, resource.RLIM_INFINITY))
    assert default_max_connections() == expected
    assert HttpLimits.from_settings(Settings()).max_connections == expected
    assert HttpLimits.from_settings(Settings(max_connections=3)).max_connections == 3


@pytest.mark.parametrize(
    ("soft", "cap", "expected"),
    [(1024, 512, 256), (20_000, 10_000, 2048), (100, 50, 64), (None, 10_000, 2048)],
)
def test_backlog_fits_in_the_descriptors_left_beyond_the_cap(
    monkeypatch: pytest.MonkeyPatch, soft: int | None, cap: int, expected: int
) -> None:
    import resource

    value = resource.RLIM_INFINITY if soft is None else soft
    monkeypatch.setattr(resource, "getrlimit", lambda _: (value, resource.RLIM_INFINITY))
    assert default_backlog(cap) == expected
    config = server_config(ok_app, Settings(max_connections=cap), log_config=None)
    assert config.backlog == expected
    assert server_config(ok_app, Settings(), log_config=None, backlog=10).backlog == 10


def test_max_header_bytes_comes_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_header_bytes == CAP
    assert HttpLimits().max_header_bytes == CAP
    assert HttpLimits.from_settings(Settings()).max_header_bytes == CAP
    monkeypatch.setenv("VLLM_MAX_HEADER_BYTES", "4096")
    assert "VLLM_MAX_HEADER_BYTES" in Settings.env_names()
    assert HttpLimits.from_settings(Settings()).max_header_bytes == 4096
    config = server_config(ok_app, Settings(), log_config=None)
    assert isinstance(config, GuardedConfig) and config.limits.max_header_bytes == 4096


def test_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        HttpLimits(header_timeout=0)
    with pytest.raises(ValueError):
        HttpLimits(max_connections=0)
    with pytest.raises(ValueError):
        HttpLimits(max_header_bytes=0)


def test_server_config_pins_the_protocol_and_owns_its_options() -> None:
    settings = Settings(keepalive_timeout=7, max_connections=9)
    config = server_config(ok_app, settings, host="127.0.0.1", port=1234, log_config=None)
    assert isinstance(config, GuardedConfig)
    assert config.http is GuardedHttpToolsProtocol
    assert (config.ws, config.timeout_keep_alive, config.limit_concurrency) == ("none", 7, None)
    assert (config.host, config.port, config.limits.max_connections) == ("127.0.0.1", 1234, 9)
    for option in ("http", "timeout_keep_alive", "limit_concurrency"):
        with pytest.raises(TypeError, match=option):
            server_config(ok_app, settings, log_config=None, **{option: None})


async def test_the_protocol_needs_its_config() -> None:
    plain = Config(ok_app, http=GuardedHttpToolsProtocol, log_config=None)
    with pytest.raises(TypeError, match="server_config"):
        GuardedHttpToolsProtocol(plain, ServerState(), {}, asyncio.get_running_loop())


# -- the header deadline ----------------------------------------------------------------------


async def test_idle_connection_is_closed_after_the_header_timeout() -> None:
    conn = Conn(ok_app, limits(header_timeout=T, keepalive_timeout=5))
    await asyncio.sleep(T * 0.6)
    assert not conn.closed
    elapsed = await conn.wait_closed()
    assert T <= elapsed < T + SLACK
    assert conn.transport.written == b""  # closed silently
    assert conn.protocol not in conn.state.connections


async def test_headers_trickled_in_are_closed_at_the_deadline_from_connect() -> None:
    conn = Conn(ok_app, limits())
    conn.send(b"GET /health HTTP/1.1\r\n")
    for i in range(100):
        if conn.closed:
            break
        conn.send(b"x-slow-%d: 1\r\n" % i)
        await asyncio.sleep(T / 5)
    elapsed = await conn.wait_closed()
    assert T <= elapsed < T + SLACK


async def test_requests_in_time_are_served_and_leave_no_timer_running() -> None:
    conn = Conn(ok_app, limits())
    conn.send(GET)
    assert conn.protocol._deadline is None  # headers in: no timer while it is served
    await conn.wait_written(b"\r\n\r\n0")
    assert conn.transport.written.startswith(b"HTTP/1.1 200")
    # Between requests: the next headers are due (and uvicorn's keep-alive timer runs).
    assert conn.protocol._deadline is not None
    assert conn.protocol.timeout_keep_alive_task is not None
    conn.send(post_head(5) + b"he")  # the body in two pieces, in time
    assert conn.protocol._deadline is not None  # the body's clock
    await asyncio.sleep(T / 3)
    conn.send(b"llo")
    assert conn.protocol._deadline is None
    await conn.wait_written(b"\r\n\r\n5")
    assert not conn.closed


async def test_keep_alive_connection_idle_after_a_response_is_closed() -> None:
    conn = Conn(ok_app, limits(header_timeout=5, keepalive_timeout=T))
    conn.send(GET)
    await conn.wait_written(b"\r\n\r\n0")
    answered = time.monotonic()
    await conn.wait_closed()
    assert conn.transport.closed_at is not None
    assert T - 0.02 <= conn.transport.closed_at - answered < T + SLACK


async def test_blank_lines_between_requests_do_not_dodge_the_header_deadline() -> None:
    # Each byte cancels uvicorn's keep-alive timer; the header deadline still runs.
    conn = Conn(ok_app, limits(header_timeout=2 * T, keepalive_timeout=T / 2))
    conn.send(GET)
    await conn.wait_written(b"\r\n\r\n0")
    answered = time.monotonic()
    while not conn.closed and time.monotonic() - answered < 5:
        conn.send(b"\r\n")
        await asyncio.sleep(T / 5)
    await conn.wait_closed()
    assert conn.transport.closed_at is not None
    assert 2 * T - 0.02 <= conn.transport.closed_at - answered < 2 * T + SLACK


# -- the body deadline ------------------------------------------------------------------------


async def test_slow_body_gets_408_and_is_closed() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    conn = Conn(app, limits(header_timeout=5, body_timeout=T))
    conn.send(post_head(1000))
    headers_in = time.monotonic()
    while not conn.closed and time.monotonic() - headers_in < 5:
        conn.send(b"x")  # one byte at a time
        await asyncio.sleep(T / 10)
    await conn.wait_closed()
    assert conn.transport.closed_at is not None
    assert T <= conn.transport.closed_at - headers_in < T + SLACK
    head, _, body = bytes(conn.transport.written).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in head and b"content-type: application/json" in head
    error = json.loads(body)["error"]
    assert error["code"] == 408 and error["type"] == "request_timeout"
    await asyncio.sleep(0.02)
    assert seen[-1]["type"] == "http.disconnect"  # the app hears of it...
    assert b"late" not in conn.transport.written  # ...and cannot write after it


async def test_body_clock_waits_while_the_server_is_not_reading() -> None:
    # Expect: 100-continue and an app that asks for the body only after a long wait (a cold
    # engine): the client is not the holdup, so nothing is cut.
    async def slow_reader(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(4 * T)
        await ok_app(scope, receive, send)

    conn = Conn(slow_reader, limits(body_timeout=T))
    conn.send(post_head(3, b"expect: 100-continue\r\n"))
    await conn.wait_written(b"100 Continue", limit=10 * T)
    conn.send(b"abc")
    await conn.wait_written(b"\r\n\r\n3")
    assert not conn.closed


async def test_early_answer_then_slow_body_is_closed_without_a_second_response() -> None:
    async def reject(scope: Any, receive: Any, send: Any) -> None:  # a 401 before the body
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})

    conn = Conn(reject, limits(header_timeout=5, keepalive_timeout=5, body_timeout=T))
    conn.send(post_head(1000))
    headers_in = time.monotonic()
    while not conn.closed and time.monotonic() - headers_in < 5:
        conn.send(b"x")
        await asyncio.sleep(T / 10)
    await conn.wait_closed()
    assert conn.transport.closed_at is not None
    assert T <= conn.transport.closed_at - headers_in < T + SLACK
    assert conn.transport.written.startswith(b"HTTP/1.1 401")
    assert b"408" not in conn.transport.written


# -- what is never cut ------------------------------------------------------------------------


async def test_long_streaming_response_and_long_wait_are_not_cut() -> None:
    t = T / 3  # every deadline here; the wait and the stream outlast them several times over

    async def slow_stream(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await asyncio.sleep(3 * t)  # waits for a cold engine
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(6):
            await send({"type": "http.response.body", "body": b"tok", "more_body": True})
            await asyncio.sleep(t)
        await send({"type": "http.response.body", "body": b""})

    conn = Conn(slow_stream, limits(header_timeout=t, keepalive_timeout=t, body_timeout=t))
    conn.send(post_head(2) + b"{}")
    started = time.monotonic()
    await conn.wait_written(b"0\r\n\r\n", limit=20 * T)
    assert time.monotonic() - started > 8 * t
    assert not conn.closed
    assert conn.transport.written.count(b"tok") == 6


async def test_a_body_stuck_behind_a_running_response_is_not_cut() -> None:
    # The app answers (streaming) before the whole body is in: the body clock defers.
    async def streams_first(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(4):
            await send({"type": "http.response.body", "body": b"tok", "more_body": True})
            await asyncio.sleep(T)
        await send({"type": "http.response.body", "body": b""})

    conn = Conn(streams_first, limits(header_timeout=5, keepalive_timeout=5))
    conn.send(post_head(10))
    await conn.wait_written(b"0\r\n\r\n", limit=20 * T)
    assert conn.transport.written.count(b"tok") == 4


# -- the connection cap -----------------------------------------------------------------------


async def test_connections_over_the_cap_get_a_json_503_and_are_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_server, "REJECT_GRACE", 3 * T)  # 1 s in production
    server = Server(ok_app, limits(header_timeout=5, keepalive_timeout=5, max_connections=2))
    held = [server.connect(), server.connect()]
    over = server.connect()
    assert over.protocol.rejected and over.protocol not in server.state.connections
    over.send(GET)
    await over.wait_closed()
    head, _, body = bytes(over.transport.written).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1" in head and b"connection: close" in head
    assert json.loads(body) == {
        "error": {
            "message": "The server has too many open connections; retry shortly.",
            "type": "overloaded",
            "param": None,
            "code": 503,
        }
    }
    # One that sends nothing is not held: closed after the short grace.
    silent = server.connect()
    elapsed = await silent.wait_closed()
    assert http_server.REJECT_GRACE <= elapsed < http_server.REJECT_GRACE + SLACK
    assert over.protocol.guarded.rejecting == 0  # the graceful ones were all let go
    # Once an accepted connection goes, a new one is served again.
    held[0].transport.close()
    await asyncio.sleep(0.01)
    again = server.connect()
    assert not again.protocol.rejected
    again.send(GET)
    await again.wait_written(b"\r\n\r\n0")
    assert again.transport.written.startswith(b"HTTP/1.1 200")


async def test_a_flood_over_the_cap_is_answered_at_once_and_closed_unread() -> None:
    server = Server(ok_app, limits(header_timeout=5, keepalive_timeout=5, max_connections=2))
    assert server.limits.reject_pool == 16
    held = [server.connect() for _ in range(2)]
    graceful = [server.connect() for _ in range(16)]  # read, then answered
    assert all(c.protocol.rejected and not c.closed for c in graceful)
    assert held[0].protocol.guarded.rejecting == 16
    flood = server.connect()  # beyond the pool: answered and closed now
    assert flood.protocol.rejected and flood.closed
    head, _, body = bytes(flood.transport.written).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in head
    assert json.loads(body)["error"]["type"] == "overloaded"
    await asyncio.sleep(0)
    assert flood.protocol.guarded.rejecting == 16  # the flood path holds no slot
    graceful[0].send(GET)
    await graceful[0].wait_closed()
    assert graceful[0].transport.written.startswith(b"HTTP/1.1 503 ")
    assert held[0].protocol.guarded.rejecting == 15


async def test_a_client_that_does_not_read_cannot_hold_a_timed_out_socket() -> None:
    conn = Conn(ok_app, limits())
    conn.transport.buffered = 1 << 20  # unsent bytes a close() would wait for
    await conn.wait_closed()
    assert conn.transport.aborted


# -- the head size cap ------------------------------------------------------------------------


class CountingParser:
    """Stands in for a protocol's parser: counts the bytes it is fed."""

    def __init__(self, parser: Any) -> None:
        self.parser, self.fed = parser, 0

    def feed_data(self, data: bytes) -> None:
        self.fed += len(data)
        self.parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


def counting(conn: Conn) -> CountingParser:
    parser = CountingParser(conn.protocol.parser)
    conn.protocol.parser = parser  # type: ignore[assignment]
    return parser


def head_of(size: int, target: bytes = b"/health", line: int = 1024) -> bytes:
    """A GET's head of exactly ``size`` bytes (request line, header lines, blank line), made
    up to size with ``x-pad-N`` header lines of about ``line`` bytes each."""
    head = b"GET %s HTTP/1.1\r\nhost: test\r\n" % target
    lines, left, i = [], size - len(head) - 2, 0
    while left:
        n = left if left < 2 * line else line
        name = b"x-pad-%d" % i
        lines.append(b"%s: %s\r\n" % (name, b"v" * (n - len(name) - 4)))
        left, i = left - n, i + 1
    head += b"".join(lines) + b"\r\n"
    assert len(head) == size
    return head


def assert_431(written: bytes, cap: int = CAP) -> None:
    head, _, body = written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), written[:200]
    assert b"connection: close" in head and b"content-type: application/json" in head
    assert int(head.split(b"content-length: ")[1].split(b"\r\n")[0]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, 431)
    assert str(cap) in error["message"] and "VLLM_MAX_HEADER_BYTES" in error["message"]


def recording_app(seen: list[str]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await ok_app(scope, receive, send)

    return app


@pytest.mark.parametrize(
    "head",
    [
        head_of(CAP + 1),  # many headers, one byte over
        head_of(CAP + 1, line=CAP),  # one long header
        head_of(CAP + 1, target=b"/" + b"u" * (CAP - 100), line=60),  # a long URL
    ],
    ids=["many-headers", "one-header", "long-url"],
)
async def test_a_head_over_the_cap_gets_a_json_431_and_is_closed(head: bytes) -> None:
    seen: list[str] = []
    conn = Conn(recording_app(seen), limits())
    parser = counting(conn)
    conn.send(head + b"GET /next HTTP/1.1\r\nhost: test\r\n\r\n")
    assert conn.closed  # at once, not at the header deadline
    assert parser.fed == CAP  # nothing beyond the cap was parsed
    assert_431(bytes(conn.transport.written))
    await conn.wait_closed()
    assert conn.protocol not in conn.state.connections
    await asyncio.sleep(0.02)
    assert seen == []  # no route saw it


async def test_heads_up_to_the_cap_are_served() -> None:
    seen: list[str] = []
    conn = Conn(recording_app(seen), limits(keepalive_timeout=5, header_timeout=5))
    # Many headers (60 KiB), twice on one kept-alive connection: each head is counted anew.
    for i in range(2):
        conn.send(head_of(60 * 1024, line=400))
        await conn.wait_written(b"\r\n\r\n0", limit=3.0)
        assert conn.transport.written.startswith(b"HTTP/1.1 200"), i
        assert not conn.closed
        conn.transport.written.clear()
    # A head of exactly the cap, in pieces.
    head = head_of(CAP, line=CAP)
    for start in range(0, len(head), 1000):
        conn.send(head[start : start + 1000])
    await conn.wait_written(b"\r\n\r\n0")
    assert conn.transport.written.startswith(b"HTTP/1.1 200") and not conn.closed
    assert seen == ["/health"] * 3


async def test_a_huge_header_sent_in_pieces_is_cut_off_at_the_cap() -> None:
    conn = Conn(ok_app, limits())
    parser = counting(conn)
    conn.send(b"GET /health HTTP/1.1\r\nhost: test\r\nx-big: ")
    piece, sent = b"a" * 65536, 0
    while sent < 8 * 2**20 and not conn.closed:  # 8 MB
        conn.send(piece)
        sent += len(piece)
    assert conn.closed and sent <= 2 * len(piece)  # cut in the second piece
    assert parser.fed == CAP
    assert_431(bytes(conn.transport.written))


async def test_an_oversized_head_pipelined_behind_a_request_gets_431_after_its_answer() -> None:
    # The second head starts inside the same read as the first request: counted field by
    # field as the parser delivers it (URL, header names and values). The 431 waits for the
    # first request's answer (it must not land inside it); nothing more is parsed meanwhile.
    seen: list[str] = []
    conn = Conn(recording_app(seen), limits())
    parser = counting(conn)
    conn.send(GET + head_of(3 * CAP, target=b"/second", line=500))
    assert parser.fed <= 2 * CAP
    conn.send(GET)  # ignored: the connection is done reading
    await conn.wait_closed()
    written = bytes(conn.transport.written)
    assert written.startswith(b"HTTP/1.1 200") and written.count(b"HTTP/1.1 ") == 2
    assert_431(written[written.index(b"HTTP/1.1 431") :])
    assert seen == ["/health"]


async def test_trailers_over_the_cap_get_431_in_place_of_the_request() -> None:
    # Trailers after a chunked body are header fields too: counted with the head.
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (message := await receive())["type"] != "http.disconnect":
            seen.append(message)
            if not message.get("more_body"):
                break
        await ok_app(scope, receive, send)  # too late: nothing reaches the wire

    conn = Conn(app, limits(header_timeout=5, body_timeout=5))
    conn.send(b"POST /v1/x HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n")
    conn.send(b"3\r\nabc\r\n0\r\n")
    trailer = b"x-trailer: " + b"t" * 1000 + b"\r\n"
    while not conn.closed:
        conn.send(trailer)
        await asyncio.sleep(0)
    await conn.wait_closed()
    assert_431(bytes(conn.transport.written))
    await asyncio.sleep(0.02)
    assert all(m["type"] == "http.request" for m in seen) and seen[-1].get("more_body")


@contextlib.contextmanager
def serving(app: Any, settings: Settings) -> Iterator[str]:
    """``app`` on the wrapper's own server (``server_config``) in a thread, on a Unix socket
    (unit tests stay off the network); yields the socket's path."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "wrapper.sock")
        config = server_config(app, settings, uds=path, log_config=None, lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while not server.started:
                assert thread.is_alive() and time.monotonic() < deadline, "no server"
                time.sleep(0.01)
            yield path
        finally:
            server.should_exit = True
            thread.join(10)


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    return sock


def get_over_socket(path: str) -> bytes:
    with connect(path) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_a_huge_header_over_a_socket_is_cut_off_early_and_the_server_keeps_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    received: list[int] = []  # what the server read from its sockets
    data_received = GuardedHttpToolsProtocol.data_received

    def counted(self: GuardedHttpToolsProtocol, data: bytes) -> None:
        received.append(len(data))
        data_received(self, data)

    monkeypatch.setattr(GuardedHttpToolsProtocol, "data_received", counted)
    total = 8 * 2**20  # an 8 MB header, sent in 64 KiB pieces
    with serving(ok_app, Settings(header_timeout=30)) as path:
        with connect(path) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: test\r\nx-big: ")
            sent, answer, cut = 0, b"", False
            piece = b"a" * 65536
            while sent < total:
                try:
                    sock.sendall(piece)
                except (BrokenPipeError, ConnectionResetError):
                    cut = True
                    break
                sent += len(piece)
                if select.select([sock], [], [], 0.005)[0]:  # the server has answered
                    with contextlib.suppress(ConnectionResetError):
                        answer = sock.recv(65536)
                    break
            # The server answered or hung up well before the client was done.
            assert cut or answer, "the server read the whole 8 MB header"
            assert sent < total / 2
            if answer:
                with contextlib.suppress(OSError):
                    while chunk := sock.recv(65536):
                        answer += chunk
                assert_431(answer)
        # It read about the cap, not the header: one read beyond it at most.
        assert sum(received) < CAP + 512 * 1024, sum(received)
        # And it still serves other connections.
        answer = get_over_socket(path)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n0")
