"""The wrapper's own errors, and the JSON answer every error gets (OpenAI's shape).

Every failure answers ``{"error": {"message", "type", "param", "code"}}``: a request that
breaks a rule names the field in ``param``; an engine failure keeps its status and, when it
is worth retrying, a ``Retry-After`` header.
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

from ..core.errors import EngineError, error_body
from ..gateway import LimitExceeded

__all__ = [
    "AuthError",
    "ClientGone",
    "Forbidden",
    "InvalidRequest",
    "engine_error_response",
    "install",
    "parse_body",
]

log = logging.getLogger("vllm_autoscale.wrapper")
M = TypeVar("M", bound=BaseModel)


class InvalidRequest(Exception):
    """A request that is well-formed JSON but breaks a rule; answered 4xx naming the field."""

    def __init__(self, message: str, param: str, status: int = HTTPStatus.UNPROCESSABLE_ENTITY):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


class AuthError(Exception):
    """No key, or the wrong one."""


class Forbidden(Exception):
    """A valid key without the role a route needs."""


class ClientGone(Exception):
    """The caller disconnected; its engine work was cancelled."""


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


def engine_error_response(exc: EngineError) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(int(exc.retry_after))
    return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=headers)


async def _auth_error(_: Request, __: Exception) -> JSONResponse:
    return JSONResponse(
        error_body("missing or invalid API key: send 'Authorization: Bearer <key>'",
                   type="authentication_error", code=401),
        status_code=HTTPStatus.UNAUTHORIZED,
        headers={"WWW-Authenticate": "Bearer"},
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


async def _forbidden(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        error_body(str(exc), type="permission_error", code=403), status_code=HTTPStatus.FORBIDDEN
    )


async def _limit_exceeded(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LimitExceeded)
    request.app.state.metrics.count_key(exc.key, f"limited:{exc.limit}")
    # As OpenAI's: `type` names the limit (rpm, tpm, max_streams, monthly_budget_usd), `code`
    # is rate_limit_exceeded (wait and retry) or insufficient_quota (someone must act).
    body = error_body(str(exc), type=exc.limit, param=None, code=exc.code)
    return JSONResponse(
        body, status_code=HTTPStatus.TOO_MANY_REQUESTS,
        headers={"Retry-After": str(exc.retry_after)},
    )  # fmt: skip


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own errors (unparsable body, unknown route, wrong method) in our shape.
    assert isinstance(exc, StarletteHTTPException)
    param = "body" if exc.status_code == HTTPStatus.BAD_REQUEST else None
    return JSONResponse(
        error_body(str(exc.detail), param=param, code=exc.status_code),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _client_gone(_: Request, __: Exception) -> Response:
    return Response(status_code=499)  # nginx's "client closed request"; nobody reads it


async def _invalid_request(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidRequest)
    return JSONResponse(
        error_body(exc.message, param=exc.param, code=exc.status), status_code=exc.status
    )


async def _engine_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EngineError)
    return engine_error_response(exc)


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
    app.add_exception_handler(AuthError, _auth_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientGone, _client_gone)
    # The client left while sending its body (or the server timed the body out): nothing to
    # answer and nothing to log as an error.
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(InvalidRequest, _invalid_request)
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(Forbidden, _forbidden)
    app.add_exception_handler(LimitExceeded, _limit_exceeded)
