"""Pure ASGI middleware around every request: its id, the body-size limit, metrics, a log line.

Pure ASGI (not ``BaseHTTPMiddleware``): it adds no task and no copy of a streamed body.
"""

from __future__ import annotations

import logging
import time
import uuid
from http import HTTPStatus

from fastapi.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.errors import error_body
from .metrics import Metrics

__all__ = ["FastPath", "RequestContext"]

log = logging.getLogger("vllm_autoscale.wrapper")


class RequestContext:
    """Pure ASGI middleware: request ids, body-size limit, metrics and one JSON log line."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def _buffer_body(self, receive: Receive) -> tuple[Receive, bool]:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                return receive, True
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        return replayed, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        length = headers.get(b"content-length")
        too_large = length is not None and length.isdigit() and int(length) > self.max_body_bytes
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # A chunked body has no length up front: read it (up to the limit) and replay it.
            receive, too_large = await self._buffer_body(receive)
        if too_large:
            response = JSONResponse(
                error_body(
                    f"request body exceeds {self.max_body_bytes} bytes", param="body", code=413
                ),
                status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
            await response(scope, receive, send_with_id)
        else:
            await self.app(scope, receive, send_with_id)
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.metrics.observe_request(path, status, elapsed)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "request",
                extra={"request_id": request_id, "method": scope["method"], "path": scope["path"],
                       "status": status, "duration_ms": round(elapsed * 1000, 2)},
            )  # fmt: skip


class FastPath:
    """Pure ASGI: hand the inference routes' requests straight to their route.

    Each route is an ordinary route of the app's router, which would serve it the same way;
    this skips the layers between here and the router (FastAPI's exception and exit-stack
    middlewares, the route scan), about 30 µs of the inference route's hop. Its errors still
    reach the app's exception handlers: Starlette's own dispatch reads them from the scope
    key ``ExceptionMiddleware`` would have set.
    """

    def __init__(self, app: ASGIApp, routes: list[Route]) -> None:
        self.app = app
        self.routes = {route.path: route for route in routes}
        self._handlers: tuple[dict, dict] | None = None

    def _exception_handlers(self, scope: Scope) -> tuple[dict, dict]:
        if self._handlers is None:
            table = scope["app"].exception_handlers
            status = {k: v for k, v in table.items() if isinstance(k, int)}
            # `Exception` is ServerErrorMiddleware's (outside this one), as in Starlette.
            typed = {
                k: v for k, v in table.items() if not isinstance(k, int) and k is not Exception
            }
            self._handlers = (typed, status)
        return self._handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is not None and scope["method"] in (route.methods or ()):
            scope["route"] = route  # the metrics' route label
            scope["starlette.exception_handlers"] = self._exception_handlers(scope)
            await route.handle(scope, receive, send)
            return
        await self.app(scope, receive, send)
