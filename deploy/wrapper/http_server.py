"""The wrapper's HTTP server: uvicorn's httptools protocol with connection hygiene.

The wrapper is an always-on public endpoint, and every client connection holds one file
descriptor. Uvicorn as configured by default bounds none of the phases in which a client, not
the server, decides how long a socket stays open: a connection that sends nothing is held
forever (uvicorn's keep-alive timer runs only *after* a response), so is one that sends half
its headers, or its body one byte a second. Measured before this module: 200 idle sockets and
a 1-byte/s body were all still held after 30 s, and 1,100 idle sockets under a 1,024
descriptor limit took ``/health`` down and made inference fail with 503 "lost the engine"
(the wrapper could not open a socket to the engine). So:

``header_timeout`` (``VLLM_HEADER_TIMEOUT``, 10 s)
    A request's headers must be complete within this long of the connection opening, or of
    the previous response's end on a kept-alive connection. Closes idle sockets that never
    send a request and slow-header ("slow loris") clients, including ones that trickle blank
    lines between requests to dodge the keep-alive timer.
``keepalive_timeout`` (``VLLM_KEEPALIVE_TIMEOUT``, 5 s)
    An idle kept-alive connection (not one byte since the last response) is closed after
    this long: uvicorn's own keep-alive timer, set from here.
``body_timeout`` (``VLLM_BODY_TIMEOUT``, 30 s)
    Once the headers are in, the whole body must arrive within this long, else the client
    gets a 408 (OpenAI-shaped JSON) and the connection is closed. 30 s carries the largest
    body the wrapper accepts (``VLLM_MAX_BODY_BYTES``, 4 MB) at ~130 KB/s. The clock only
    blames the client: while the server is not reading (the app has not asked for the body
    yet, ``Expect: 100-continue`` unanswered, a pipelined request waiting its turn) or is
    already answering, it is put off, and once the server is ready the client still gets a
    whole period.
``max_header_bytes`` (``VLLM_MAX_HEADER_BYTES``, 64 KiB)
    The largest request head (request line, header lines, blank line) the server reads. One
    that goes over gets a 431 (OpenAI-shaped JSON) and the connection is closed, before any
    route or key check sees the request. Nothing past the cap is read: the bytes of a head are
    counted before they reach the parser, which is never fed more than the cap of one head
    (httptools hands a header over only once it is whole, so counting its callbacks alone
    would buffer a 64 MB header first). Measured before: a 64 MB header was read, unbounded.
``max_connections`` (``VLLM_MAX_CONNECTIONS``, ``min(10000, RLIMIT_NOFILE soft // 2)``)
    Connections beyond the cap get 503 ``overloaded`` (OpenAI-shaped JSON, ``Retry-After``)
    and are closed: load is shed before descriptors run out. Half the descriptor limit is
    left for the engine's connections, the engine's log, the model files. A few over the cap
    at a time (1/16 of it, at least 16) are answered gracefully: their request is read, then
    answered, or they are closed after a 1 s grace if they send none. Beyond that, in a
    flood, the 503 is written the moment a connection is accepted and the socket is closed
    unread, so its descriptor is freed at once. Rejected connections do not
    count against the cap: clients get back in as soon as an accepted connection goes. The
    listen backlog is capped to half the descriptors left beyond the cap (the event loop
    accepts all pending connections at once, before any protocol can turn one away).

None of these limits touches a request once it has been received: a response that streams
for minutes, or a request waiting minutes for a cold engine, runs as long as it needs (the
wrapper's own ``VLLM_QUEUE_TIMEOUT`` bounds that wait). Each phase costs at most one timer:
one ``call_later`` when a connection opens or a response ends (cancelled when the next
headers are complete), and one more only for a body that does not arrive with its headers.
No task is created per request beyond uvicorn's own.

``server_config()`` is the one place the wrapper's uvicorn server is configured
(``LocalStack``, hence ``vllm-autoscale serve --local``, the tests and the benchmarks). On
Modal the wrapper runs behind Modal's own web front end, which owns client connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from ..core.errors import error_body
from ..settings.settings import Settings

__all__ = [
    "GuardedConfig",
    "GuardedHttpToolsProtocol",
    "HttpLimits",
    "default_backlog",
    "default_max_connections",
    "server_config",
]

log = logging.getLogger("vllm_autoscale.wrapper")

REJECT_GRACE = 1.0
"""Seconds a connection over the cap may take to send its request before it is closed."""
RETRY_AFTER = 1
"""``Retry-After`` (seconds) of the over-the-cap 503."""
_WARN_EVERY = 60.0


def _descriptor_limit() -> int | None:
    """The process's soft RLIMIT_NOFILE; None where unknown or unlimited."""
    try:
        import resource  # noqa: PLC0415 - resource is POSIX-only
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else soft


def default_max_connections() -> int:
    """``min(10000, soft RLIMIT_NOFILE // 2)``: half the descriptors stay for the engine's
    connections and files. 10000 where the limit is unknown or unlimited."""
    soft = _descriptor_limit()
    return 10_000 if soft is None else max(1, min(10_000, soft // 2))


def default_backlog(max_connections: int) -> int:
    """The listen backlog: uvicorn's 2048, but at most half the descriptors left beyond the
    cap (at least 64). The event loop accepts every pending connection in one go, before a
    protocol sees any of them: a full backlog must fit in the descriptors that are left."""
    soft = _descriptor_limit()
    if soft is None:
        return 2048
    return max(64, min(2048, (soft - max_connections) // 2))


@dataclass(frozen=True)
class HttpLimits:
    """How long a client may take to send a request, how large its head may be, and how many
    connections it may hold."""

    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    body_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = field(default_factory=default_max_connections)

    def __post_init__(self) -> None:
        for name in ("header_timeout", "keepalive_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_header_bytes < 1:
            raise ValueError(f"max_header_bytes must be >= 1, got {self.max_header_bytes!r}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            header_timeout=settings.header_timeout,
            keepalive_timeout=settings.keepalive_timeout,
            body_timeout=settings.body_timeout,
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections or default_max_connections(),
        )

    @property
    def reject_pool(self) -> int:
        """Connections over the cap that may be answered gracefully at once (their request
        read, then the 503): 1/16 of the cap, at least 16. Beyond that (a flood) the 503 is
        written as soon as a connection is accepted, and the socket closed unread."""
        return max(16, self.max_connections // 16)


def _json_response(body: dict[str, Any]) -> tuple[bytes, bytes]:
    """(the headers, the body) of a ``connection: close`` JSON response, status line apart."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % len(payload), payload


_OVERLOADED_BODY = json.dumps(
    error_body(
        "The server has too many open connections; retry shortly.", type="overloaded", code=503
    ),
    separators=(",", ":"),
).encode()
_OVERLOADED_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_OVERLOADED_BODY)).encode()),
    (b"retry-after", str(RETRY_AFTER).encode()),
    (b"connection", b"close"),
]
_OVERLOADED_HEAD = b"".join(b"%s: %s\r\n" % header for header in _OVERLOADED_HEADERS) + b"\r\n"
_TIMEOUT_HEAD, _TIMEOUT_BODY = _json_response(
    error_body(
        "The request body did not arrive in time; the connection is closed.",
        type="request_timeout",
        param="body",
        code=408,
    ),
)


def _head_too_large_response(limit: int) -> bytes:
    """The 431 for a request head over ``limit`` bytes, status line apart."""
    head, body = _json_response(
        error_body(
            f"The request head (request line and headers) is larger than the {limit} bytes "
            "this server accepts (VLLM_MAX_HEADER_BYTES); the connection is closed.",
            code=431,
        ),
    )
    return head + body


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop the parser where a head went over the cap."""


async def _overloaded(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app a connection over the cap gets instead of the wrapper."""
    await send({"type": "http.response.start", "status": 503, "headers": _OVERLOADED_HEADERS})
    await send({"type": "http.response.body", "body": _OVERLOADED_BODY})


_last_warning = 0.0


def _warn_over_cap(limit: int) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= _WARN_EVERY:
        _last_warning = now
        log.warning(
            "connection cap reached (VLLM_MAX_CONNECTIONS=%d): answering new connections 503",
            limit,
        )


class GuardedConfig(Config):
    """A ``uvicorn.Config`` that serves with ``GuardedHttpToolsProtocol`` under ``limits``
    (one per server: it also counts the server's connections being turned away).

    The protocol is pinned: uvicorn's h11 protocol never serves the wrapper (``server_config``
    refuses an ``http`` option), so the limits here, the head cap included, are enforced for
    the httptools protocol only."""

    def __init__(self, app: Any, *, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(
            app,
            http=GuardedHttpToolsProtocol,
            ws="none",  # the wrapper has no WebSocket route: no upgrade dodges the timers
            timeout_keep_alive=limits.keepalive_timeout,  # type: ignore[arg-type]
            limit_concurrency=None,  # the cap is ours (a JSON 503, closed at once)
            **kwargs,
        )
        self.limits = limits
        self.rejecting = 0  # over the cap, being answered gracefully


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol with a header deadline, a body deadline, a head size cap
    and a connection cap.

    One timer handle, ``_deadline``, per connection: the header deadline from
    ``connection_made`` (or a response's end) to ``on_headers_complete``, then, only if the
    body is still missing after the bytes at hand were parsed, the body deadline until
    ``on_message_complete``. While the request is served there is none (uvicorn's keep-alive
    timer takes over after the response).

    The head cap is counted twice over. ``_head_left``: the bytes a head may still take, from
    connection_made (or the previous request's end) to ``on_headers_complete``; a read is
    handed to the parser only up to it, so the parser is never fed more than the cap of one
    head. ``_head_fields``: the URL, header names and values as the parser delivers them
    (``on_url``, ``on_header``), for a head that begins inside a read the parser was handed
    whole (pipelined behind a request, or behind a body). Either one going over answers 431.

    Private API, on purpose: uvicorn has no public hook for any of this (its only knobs are
    ``timeout_keep_alive``, ``limit_concurrency`` and ``h11_max_incomplete_event_size``; a
    custom ``http=`` protocol class is the documented extension, what it inherits is not).
    This subclass overrides the parser callbacks, ``data_received``, ``send_400_response`` and
    ``on_response_complete``, and reads ``cycle`` (``response_started``,
    ``response_complete``, ``disconnected``, ``message_event``, ``waiting_for_100_continue``),
    ``flow`` (``read_paused``, ``pause_reading``), ``pipeline``, ``connections``,
    ``server_state.default_headers`` and the module's ``STATUS_LINE``. So uvicorn is pinned
    below its next minor in ``deploy/pyproject.toml`` (tested on 0.55), and
    ``tests/unit_tests/wrapper/test_uvicorn_contract.py`` fails, naming the attribute, when a
    release moves one of them.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not isinstance(config, GuardedConfig):
            raise TypeError("serve GuardedHttpToolsProtocol with server_config()/GuardedConfig")
        super().__init__(config, server_state, app_state, _loop)
        self.guarded = config
        limits = self.limits = config.limits
        self.timeout_keep_alive = limits.keepalive_timeout  # type: ignore[assignment]
        self._deadline: asyncio.TimerHandle | None = None
        self._in_body = False
        self._deferred = False  # the body clock was put off: the server was the holdup
        self.rejected = False
        self._graceful_reject = False
        self._head_left: int | None = limits.max_header_bytes  # None: not receiving a head
        self._head_fields = 0
        self._head_over = False  # a head went over the cap: nothing more is read or parsed

    # -- the connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.limits
        if len(self.connections) <= limits.max_connections:
            self._deadline = self.loop.call_later(limits.header_timeout, self._headers_timed_out)
        else:
            self._reject()

    def _reject(self) -> None:
        """Over the cap: a JSON 503, then closed. Not counted against the cap (it goes at
        once, or within REJECT_GRACE), so clients get back in as soon as a connection goes."""
        self.connections.discard(self)
        self.rejected = True
        self.app = _overloaded  # type: ignore[assignment]
        limits, guarded = self.limits, self.guarded
        _warn_over_cap(limits.max_connections)
        if guarded.rejecting < limits.reject_pool:
            # Read the request, then answer it: every client reads that 503 cleanly.
            guarded.rejecting += 1
            self._graceful_reject = True
            grace = min(REJECT_GRACE, limits.header_timeout)
            self._deadline = self.loop.call_later(grace, self._headers_timed_out)
            return
        # A flood: answer before the request comes and free the descriptor now. (Most
        # clients still read the 503; one that is still sending may see a reset instead.)
        head = [STATUS_LINE[503]]
        for name, value in self.server_state.default_headers:
            head.extend((name, b": ", value, b"\r\n"))
        self.transport.write(b"".join((*head, _OVERLOADED_HEAD, _OVERLOADED_BODY)))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._graceful_reject:
            self._graceful_reject = False
            self.guarded.rejecting -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_over:
            return  # a 431 waits for the responses before it: nothing more is parsed
        self._feed(data)
        # The headers are in but not the whole body: the body's clock starts.
        if self._in_body and self._deadline is None and not self.transport.is_closing():
            self._deferred = False
            self._deadline = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def _feed(self, data: bytes) -> None:
        """Hand ``data`` to the parser, but of a head being received no more than its cap:
        if the head has not ended when the cap is reached, it is over and gets a 431."""
        while True:
            left = self._head_left
            if left is None or len(data) <= left:
                if left is not None:
                    self._head_left = left - len(data)
                super().data_received(data)
                return
            self._head_left = 0
            if left:
                super().data_received(data[:left])
                if self._head_over or self.transport.is_closing():
                    return
            if self._head_left == 0:  # the cap reached inside the head: it is longer
                self._head_too_large()
                return
            data = data[left:]  # the head ended within the cap: the rest is read as usual

    def send_400_response(self, msg: str) -> None:
        if self._head_over:  # not a malformed request: _count_field stopped the parser
            self._head_too_large()
        else:
            super().send_400_response(msg)

    # -- parser callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._head_fields = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_field(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_field(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_left = None
        self._cancel_deadline()
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._head_left = self.limits.max_header_bytes  # the next request's head starts
        self._cancel_deadline()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if self._head_over:
            if not self.transport.is_closing():
                self._head_too_large()  # the 431 once the requests before it are answered
            return
        # Between requests: the next request's headers are due within header_timeout
        # (uvicorn's keep-alive timer closes the connection sooner if not a byte comes).
        if not (
            pipelined or self._in_body or self._deadline is not None or self.transport.is_closing()
        ):
            self._deadline = self.loop.call_later(
                self.limits.header_timeout, self._headers_timed_out
            )

    # -- the head cap ------------------------------------------------------------------------
    def _count_field(self, size: int) -> None:
        self._head_fields += size
        if self._head_fields > self.limits.max_header_bytes:
            self._head_over = True
            # Stops the parser here; uvicorn takes it for a parse error: send_400_response.
            raise _HeadTooLarge

    def _head_too_large(self) -> None:
        """The head being received is over the cap: 431 and close, reading nothing more. If
        earlier (pipelined) requests are still being answered, the 431 waits for them
        (``on_response_complete``): it must not land inside their responses."""
        self._head_over = True
        cycle = self.cycle
        if self._in_body:
            # Trailers after a chunked body (header fields too, counted with the head): the
            # request being received is refused, if it has no answer under way or owed.
            self._in_body = False
            self._cancel_deadline()
            if cycle.response_started or self.pipeline:
                self._close()
                return
            cycle.disconnected = True  # the app hears of it; nothing it sends is written
            cycle.message_event.set()
        elif self.pipeline or (cycle is not None and not cycle.response_complete):
            self.flow.pause_reading()
            return
        limit = self.limits.max_header_bytes
        log.debug("closing %s: request head over %d bytes", self.client, limit)
        head = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            head.extend((name, b": ", value, b"\r\n"))
        self.transport.write(b"".join((*head, _head_too_large_response(limit))))
        self._close()

    # -- the timers --------------------------------------------------------------------------
    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _close(self) -> None:
        transport = self.transport
        if transport.get_write_buffer_size():
            transport.abort()  # a client that does not read cannot hold the socket either
        else:
            transport.close()

    def _headers_timed_out(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.debug("closing %s: no complete request headers in time", self.client)
            self._close()

    def _server_holdup(self) -> bool:
        """Whether the server, not the client, is why the body is not in: it is not reading
        (the app has not asked for the body yet, a pipelined request waits its turn), has not
        answered ``Expect: 100-continue`` yet, or is already answering."""
        cycle = self.cycle
        return (
            self.flow.read_paused
            or cycle.waiting_for_100_continue
            or (cycle.response_started and not cycle.response_complete)
        )

    def _body_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or not self._in_body:
            return
        if self._server_holdup():
            self._deferred = True
        elif self._deferred:
            # The server became ready at most one period ago: the client gets a whole one.
            self._deferred = False
        else:
            self._time_out_body()
            return
        self._deadline = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def _time_out_body(self) -> None:
        log.debug("closing %s: the request body did not arrive in time", self.client)
        cycle = self.cycle
        if not cycle.response_started:
            # The app is waiting in receive(): it gets http.disconnect, and nothing it sends
            # after this reaches the wire.
            cycle.disconnected = True
            cycle.message_event.set()
            head = [STATUS_LINE[408]]
            for name, value in self.server_state.default_headers:
                head.extend((name, b": ", value, b"\r\n"))
            self.transport.write(b"".join((*head, _TIMEOUT_HEAD, _TIMEOUT_BODY)))
        self._close()


def server_config(
    app: Any,
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    **kwargs: Any,
) -> uvicorn.Config:
    """The wrapper's uvicorn config: ``GuardedHttpToolsProtocol`` with ``settings``' limits
    (``VLLM_HEADER_TIMEOUT``, ``VLLM_KEEPALIVE_TIMEOUT``, ``VLLM_BODY_TIMEOUT``,
    ``VLLM_MAX_HEADER_BYTES``, ``VLLM_MAX_CONNECTIONS``). ``kwargs`` go to ``uvicorn.Config``
    (log level, lifespan...); the protocol, keep-alive and concurrency options are this
    module's and cannot be overridden."""
    owned = {"http", "ws", "timeout_keep_alive", "limit_concurrency"} & kwargs.keys()
    if owned:
        raise TypeError(f"server_config() sets {', '.join(sorted(owned))} itself")
    limits = HttpLimits.from_settings(settings)
    kwargs.setdefault("backlog", default_backlog(limits.max_connections))
    return GuardedConfig(app, limits=limits, host=host, port=port, **kwargs)
