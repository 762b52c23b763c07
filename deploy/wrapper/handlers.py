"""The JSON answer every error gets (OpenAI's shape), and parsing a request body.

Every failure answers ``{"error": {"message", "type", "param", "code"}}``: a request that
breaks a rule names the field in ``param``; an engine failure keeps its status and, when it
is worth retrying, a ``Retry-After`` header.

One handler answers every ``ServiceError`` (the tree is drawn in deploy/core/errors.py); the
others are the framework's own: FastAPI's validation errors, Starlette's HTTP errors, a body
the client stopped sending (499, nothing), and anything else (500, no details). The wrapper's
errors (``InvalidRequest``, ``AuthError``, ``Forbidden``, ``ClientGone``) are defined in the
tree and still importable from here.
"""

from __future__ import annotations

import json
import logging
import math
from http import HTTPStatus
from typing import Any, TypeVar

import orjson
import pydantic_core
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from ..core.errors import (
    AuthError,
    ClientGone,
    Forbidden,
    InvalidRequest,
    ServiceError,
    error_body,
)
from ..gateway import LimitExceeded

__all__ = [
    "AuthError",
    "ClientGone",
    "Forbidden",
    "InvalidRequest",
    "engine_error_response",
    "install",
    "parse_body",
    "service_error_response",
]

log = logging.getLogger("vllm_autoscale.wrapper")
M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], raw: bytes) -> M:
    """Validate a raw JSON body in one step; errors take the path of FastAPI's own.

    A number JSON cannot carry (``NaN``, ``Infinity``, ``-Infinity``, or one past a double's
    range, ``1e400``) is refused wherever it sits, pass-through fields included: pydantic's
    parser takes them, but the engine, the cache key and every JSON answer would not."""
    _refuse_non_finite(raw)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def _refuse_non_finite(raw: bytes) -> None:
    """422 naming the first non-finite number of ``raw``, if it has one.

    orjson's parse is the quick test (a few % of the validation's time): it refuses exactly
    those numbers, and the rare bodies it refuses for another reason (or for one of them)
    are then walked to find the number's path."""
    try:
        orjson.loads(raw)
        return
    except orjson.JSONDecodeError:
        pass
    try:
        data = pydantic_core.from_json(raw)
    except ValueError:
        return  # not JSON: the model's parse names the broken body
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                raise RequestValidationError([{
                    "type": "finite_number", "loc": ("body", *path),
                    "msg": "Input should be a finite number", "input": str(value),
                }])  # fmt: skip
        elif isinstance(value, dict):
            stack.extend(((*path, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(value))))


def service_error_response(exc: ServiceError) -> Response:
    """Any ``ServiceError`` as its answer: its status, OpenAI's body, its headers."""
    if isinstance(exc, ClientGone):
        return _client_gone_response()
    return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=exc.headers())


engine_error_response = service_error_response
"""The name the serving code knows it by (an engine failure before a stream's first byte)."""


def _client_gone_response() -> Response:
    return Response(status_code=499)  # nginx's "client closed request"; nobody reads it


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    if isinstance(exc, LimitExceeded):  # once it is a ServiceError (gateway/limiter.py)
        _count_limited(request, exc)
    return service_error_response(exc)


def _count_limited(request: Request, exc: LimitExceeded) -> None:
    request.app.state.metrics.count_key(exc.key, f"limited:{exc.limit}")


async def _limit_exceeded(request: Request, exc: Exception) -> JSONResponse:
    # Transitional, until LimitExceeded derives from ServiceError (another change to
    # gateway/limiter.py): then `_service_error` answers it, and this goes.
    assert isinstance(exc, LimitExceeded)
    _count_limited(request, exc)
    # As OpenAI's: `type` names the limit (rpm, tpm, max_streams, monthly_budget_usd), `code`
    # is rate_limit_exceeded (wait and retry) or insufficient_quota (someone must act).
    body = error_body(str(exc), type=exc.limit, param=None, code=exc.code)
    return JSONResponse(
        body, status_code=HTTPStatus.TOO_MANY_REQUESTS,
        headers={"Retry-After": str(exc.retry_after)},
    )  # fmt: skip


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # Unparsable JSON is the body's fault (its loc holds a character offset, not a field).
    param = "body" if first.get("type") == "json_invalid" else ".".join(loc) or "body"
    body = error_body(f"{param}: {first.get('msg', 'invalid request')}", param=param, code=422)
    # The detail echoes inputs: a non-finite one goes out as text (JSON has no NaN).
    body["detail"] = json.loads(json.dumps(errors, default=str), parse_constant=str)
    return JSONResponse(body, status_code=HTTPStatus.UNPROCESSABLE_ENTITY)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own errors (unparsable body, unknown route, wrong method) in our shape.
    assert isinstance(exc, StarletteHTTPException)
    param = "body" if exc.status_code == HTTPStatus.BAD_REQUEST else None
    message = str(exc.detail)
    if exc.status_code == HTTPStatus.NOT_FOUND and message == "Not Found":  # no such route
        message = unknown_route_message(request)
    return JSONResponse(
        error_body(message, param=param, code=exc.status_code),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


def unknown_route_message(request: Request) -> str:
    """What a request to a route this wrapper does not have is told: the method and path it
    asked for, and every route served (read from the app, so it never goes stale)."""
    served: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods:
            served.update(f"{m} {route.path}" for m in route.methods if m != "HEAD")
    listing = ", ".join(sorted(served, key=lambda r: (r.split(" ", 1)[1], r)))
    return (
        f"{request.method} {request.url.path} is not a route of this service; it serves: {listing}"
    )


async def _client_disconnect(_: Request, __: Exception) -> Response:
    return _client_gone_response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A bug, not the caller's fault: logged with its traceback, answered without details.
    log.error("unexpected error", exc_info=exc,
              extra={"request_id": getattr(request.state, "request_id", None)})  # fmt: skip
    return JSONResponse(
        error_body("internal error in the wrapper", type="internal_error", code=500),
        status_code=HTTPStatus.INTERNAL_SERVER_ERROR,
    )


def install(app: FastAPI) -> None:
    """Register every handler on ``app``."""
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # The client left while sending its body (or the server timed the body out): nothing to
    # answer and nothing to log as an error.
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    if not issubclass(LimitExceeded, ServiceError):  # transitional: see _limit_exceeded
        app.add_exception_handler(LimitExceeded, _limit_exceeded)
