"""What ``deploy/wrapper/http_server.py`` takes from uvicorn's private httptools protocol.

``GuardedHttpToolsProtocol`` subclasses ``uvicorn.protocols.http.httptools_impl.
HttpToolsProtocol``: no public uvicorn API bounds a request's head or body in time or the head
in size, so it overrides the protocol's callbacks and reads its per-connection state. uvicorn
is pinned below its next minor in ``deploy/pyproject.toml``; this test is what moving the pin
runs into: each check names the private attribute a release moved or changed, so the failure
says what to port, before the behaviour tests (``test_http_server.py``) fail in ways that
point nowhere.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from uvicorn.protocols.http import flow_control, httptools_impl
from uvicorn.server import ServerState

from deploy.wrapper.http_server import GuardedConfig, GuardedHttpToolsProtocol, HttpLimits

PROTOCOL = httptools_impl.HttpToolsProtocol

OVERRIDDEN = (
    "connection_made",
    "connection_lost",
    "data_received",
    "send_400_response",
    "on_message_begin",
    "on_url",
    "on_header",
    "on_headers_complete",
    "on_message_complete",
    "on_response_complete",
)
"""The base's methods the subclass overrides and calls through ``super()``."""
PROTOCOL_STATE = (
    "loop",
    "transport",
    "flow",
    "client",
    "app",
    "cycle",
    "pipeline",
    "connections",
    "server_state",
    "timeout_keep_alive",
)
"""The base's per-connection attributes the subclass reads (or sets: ``app``,
``timeout_keep_alive``), present once ``connection_made`` ran."""
CYCLE_STATE = (
    "response_started",
    "response_complete",
    "disconnected",
    "message_event",
    "waiting_for_100_continue",
    "more_body",
)
"""``RequestResponseCycle``'s attributes the subclass reads or sets."""


class Transport:
    """The least of an asyncio transport a protocol needs."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.read_paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        self.read_paused = False


async def _never_answers(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.Event().wait()


def _missing(obj: object, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not hasattr(obj, name)]


def test_the_private_module_still_has_the_protocol_and_its_status_lines() -> None:
    assert inspect.isclass(PROTOCOL), "uvicorn moved httptools_impl.HttpToolsProtocol"
    status_line = getattr(httptools_impl, "STATUS_LINE", None)
    assert isinstance(status_line, dict), "uvicorn moved httptools_impl.STATUS_LINE"
    for status in (408, 431, 503):
        assert status_line[status].startswith(b"HTTP/1.1 %d " % status), (
            f"httptools_impl.STATUS_LINE[{status}] is no longer a status line"
        )


def test_the_methods_overridden_are_still_the_base_s() -> None:
    gone = [name for name in OVERRIDDEN if not callable(getattr(PROTOCOL, name, None))]
    assert not gone, f"HttpToolsProtocol no longer has {gone}: port GuardedHttpToolsProtocol"
    init = inspect.signature(PROTOCOL.__init__).parameters
    for name in ("config", "server_state", "app_state", "_loop"):
        assert name in init, f"HttpToolsProtocol.__init__ lost its {name!r} parameter"
    assert "msg" in inspect.signature(PROTOCOL.send_400_response).parameters, (
        "HttpToolsProtocol.send_400_response(msg) changed its signature"
    )


def test_flow_control_and_server_state_keep_what_is_read() -> None:
    flow = flow_control.FlowControl(Transport())  # type: ignore[arg-type]
    assert not _missing(flow, ("read_paused", "pause_reading", "resume_reading")), (
        f"FlowControl lost {_missing(flow, ('read_paused', 'pause_reading', 'resume_reading'))}"
    )
    state = ServerState()
    assert not _missing(state, ("connections", "default_headers")), (
        f"ServerState lost {_missing(state, ('connections', 'default_headers'))}"
    )


async def test_a_connection_s_state_is_where_the_subclass_reads_it() -> None:
    limits = HttpLimits(header_timeout=5, keepalive_timeout=5, body_timeout=5)
    config = GuardedConfig(_never_answers, limits=limits, log_config=None, lifespan="off")
    state = ServerState()
    protocol = GuardedHttpToolsProtocol(
        config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    try:
        missing = _missing(protocol, PROTOCOL_STATE)
        assert not missing, f"HttpToolsProtocol no longer sets {missing}"
        assert protocol in state.connections, "HttpToolsProtocol no longer registers itself"
        assert protocol.cycle is None  # no request yet: the subclass tests for None
        # A request whose body is still to come: the cycle exists, with its flags.
        protocol.data_received(b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\n")
        cycle = protocol.cycle
        assert cycle is not None, "on_headers_complete no longer sets `cycle`"
        missing = _missing(cycle, CYCLE_STATE)
        assert not missing, f"RequestResponseCycle no longer has {missing}"
        assert isinstance(cycle.message_event, asyncio.Event), "cycle.message_event changed"
        assert len(protocol.pipeline) == 0, "HttpToolsProtocol.pipeline changed"
    finally:
        protocol.connection_lost(None)
        await asyncio.sleep(0)


async def test_an_exception_in_a_parser_callback_still_reaches_send_400_response() -> None:
    # The head cap stops the parser by raising inside on_header; uvicorn must turn that into
    # its parse-error path (send_400_response), which the subclass answers with the 431.
    seen: list[str] = []

    class Probe(PROTOCOL):  # type: ignore[misc, valid-type]
        def on_header(self, name: bytes, value: bytes) -> None:
            raise RuntimeError("stop")

        def send_400_response(self, msg: str) -> None:
            seen.append(msg)

    config = GuardedConfig(_never_answers, limits=HttpLimits(), log_config=None, lifespan="off")
    protocol = Probe(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    protocol.connection_made(Transport())  # type: ignore[arg-type]
    try:
        protocol.data_received(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
    except Exception as exc:
        raise AssertionError(
            "an exception raised in a parser callback escaped HttpToolsProtocol.data_received "
            f"({exc!r}): the head cap (_count_field) relies on it being caught"
        ) from exc
    finally:
        protocol.connection_lost(None)
    assert seen, (
        "HttpToolsProtocol.data_received no longer turns an exception raised in a parser "
        "callback into send_400_response: the head cap (_count_field) relies on it"
    )
