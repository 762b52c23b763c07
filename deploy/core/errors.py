"""The service's errors: one tree, one wire shape.

Every failure the service answers is a ``ServiceError``: it carries the HTTP status, the body
OpenAI's API answers with (``{"error": {"message", "type", "param", "code"}}``, ``to_body``)
and, when the request is worth sending again, ``retry_after`` (the ``Retry-After`` header,
``headers``). The wrapper has one handler for all of them. They pickle cleanly, subclasses
with their own constructors included, because on Modal the engine's are raised inside the GPU
container and re-raised in the wrapper.

    ServiceError                 status_code, error_type, param, code, retry_after, message
    ├── InvalidRequest           4xx (422 unless told): a request that breaks a rule; ``param``
    │                            names the field
    ├── AuthError                401: no key, or the wrong one (``WWW-Authenticate: Bearer``)
    ├── Forbidden                403: a valid key without the role a route needs
    ├── ClientGone               499: the caller disconnected; nothing is answered
    ├── EngineError              503 unless told: a failure between the engine and the wrapper
    │   ├── EngineRequestError   the engine rejected the request (4xx from vLLM: bad params,
    │   │                        too long)
    │   ├── EngineUnavailable    the engine is not there: not started, died, or connection lost
    │   │   └── EngineStartError the engine failed to start; carries the reason from its log
    │   ├── Overloaded           the wrapper's wait queue is full or the wait timed out (503/429)
    │   ├── StoreUnavailable     the gateway's state store cannot be read: keys and usage
    │   │                        unknown (503)
    │   └── UpstreamError        what another server answered (vLLM, the cold fallback) as
    │                            ``error_from_body`` reads it, before its reader judges it
    ├── LimitExceeded            429: a key over one of its limits (deploy/gateway/limiter.py)
    ├── TokenCountError          a count that cannot be made (deploy/wrapper/tokenize/counter.py)
    └── CliError                 the operator's CLI: one readable line (deploy/ops/cli/)

The last three live with their code (this module imports nothing of the project) and keep
their own attributes (``limit``, ``hint``, ...) beside the base's.
"""

from __future__ import annotations

import contextlib
from http import HTTPStatus
from typing import Any, ClassVar

import orjson

__all__ = [
    "AuthError",
    "ClientGone",
    "EngineError",
    "EngineRequestError",
    "EngineStartError",
    "EngineUnavailable",
    "Forbidden",
    "InvalidRequest",
    "Overloaded",
    "ServiceError",
    "StoreUnavailable",
    "UpstreamError",
    "error_body",
    "error_from_body",
    "http_status",
]


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | int | None = None,
) -> dict[str, Any]:
    """The OpenAI error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ServiceError(Exception):
    """Base class: an error with the HTTP status and the OpenAI-shaped body it is answered with.

    Each argument given overrides its class default; one left out (None) keeps the class's,
    or what a subclass set before calling this constructor. ``code`` defaults to the status.
    """

    status_code: int = HTTPStatus.INTERNAL_SERVER_ERROR
    error_type: str = "internal_error"
    param: str | None = None
    retry_after: float | None = None
    _not_pickled: ClassVar[tuple[str, ...]] = ()
    """Attributes that stay on the side that raised the error (a log tail, say)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        param: str | None = None,
        code: str | int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = int(status_code)
        if error_type is not None:
            self.error_type = error_type
        if param is not None:
            self.param = param
        if code is not None:
            self._code = code
        if retry_after is not None:
            self.retry_after = retry_after

    @property
    def code(self) -> str | int:
        """The body's ``code``: the one given, else the HTTP status."""
        code: str | int | None = self.__dict__.get("_code")
        return self.status_code if code is None else code

    def to_body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.error_type, param=self.param, code=self.code)

    def headers(self) -> dict[str, str]:
        """The answer's headers: ``Retry-After`` (whole seconds) when a retry is worth it."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(int(self.retry_after))}

    def __reduce__(self) -> tuple[Any, ...]:
        # The instance's attributes as they are, whatever its constructor takes.
        state = {k: v for k, v in self.__dict__.items() if k not in self._not_pickled}
        return (_rebuild, (type(self), self.args, state))


def _rebuild(cls: type[ServiceError], args: tuple[Any, ...], state: dict[str, Any]) -> ServiceError:
    exc = cls.__new__(cls, *args)
    exc.__dict__.update(state)
    return exc


class InvalidRequest(ServiceError):
    """A request that is well-formed JSON but breaks a rule; answered 4xx naming the field."""

    status_code = HTTPStatus.UNPROCESSABLE_ENTITY
    error_type = "invalid_request_error"

    def __init__(
        self, message: str, param: str, status: int = HTTPStatus.UNPROCESSABLE_ENTITY
    ) -> None:
        super().__init__(message, status_code=status, param=param)

    @property
    def status(self) -> int:
        return self.status_code


class AuthError(ServiceError):
    """No key, or the wrong one."""

    status_code = HTTPStatus.UNAUTHORIZED
    error_type = "authentication_error"

    def __init__(
        self, message: str = "missing or invalid API key: send 'Authorization: Bearer <key>'"
    ) -> None:
        super().__init__(message)

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    """A valid key without the role a route needs."""

    status_code = HTTPStatus.FORBIDDEN
    error_type = "permission_error"


class ClientGone(ServiceError):
    """The caller disconnected; its engine work was cancelled. Answered 499 (nginx's "client
    closed request") without a body: nobody reads it."""

    status_code = 499
    error_type = "client_closed_request"

    def __init__(self, message: str = "the client disconnected") -> None:
        super().__init__(message)


class EngineError(ServiceError):
    """A failure between the engine and the wrapper (503 unless told otherwise)."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    error_type = "engine_error"


class EngineRequestError(EngineError):
    """vLLM rejected the request; status and message are vLLM's own."""

    status_code = HTTPStatus.BAD_REQUEST
    error_type = "invalid_request_error"


class EngineUnavailable(EngineError):
    """The engine cannot serve right now (stopped, crashed, connection lost mid-request)."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    error_type = "engine_unavailable"


class EngineStartError(EngineUnavailable):
    """The engine process failed to become ready. ``message`` names the root cause, short
    and without paths (the caller sees it); ``detail`` holds the log tail (the operator's,
    never sent to callers and never pickled across Modal)."""

    error_type = "engine_start_failed"
    detail: str = ""
    _not_pickled = ("detail",)

    def __init__(self, message: str, *, detail: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.detail = detail


class Overloaded(EngineError):
    """Too many requests are waiting for the engine; retry after ``retry_after`` seconds."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    error_type = "overloaded"


class StoreUnavailable(EngineError):
    """The gateway's state store does not answer, so what it holds (stored keys, usage) is
    not known: a keyed route answers 503 rather than guess (never open, never a 500)."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    error_type = "state_store_unavailable"


class UpstreamError(EngineError):
    """An error another server sent (vLLM, the cold fallback), as ``error_from_body`` reads
    it: its status and message. Its reader judges it (the engine asks whether vLLM is still
    healthy; the fallback answers a generic 503) before anyone is answered."""


def http_status(code: Any) -> int | None:
    """``code`` (an int, or digits) when it is an HTTP error status (4xx, 5xx), else None."""
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        return int(code)
    return None


def error_from_body(status: int | None, body: Any) -> UpstreamError:
    """Another server's error answer (a JSON body, or one SSE error event's data) read once.

    ``body``: the answer's bytes or text (parsed here when JSON) or its parsed JSON; the error
    object is its ``"error"`` (OpenAI's, vLLM's) or the body itself (vLLM's older top-level
    shape, FastAPI's ``{"detail": ...}``). The message is its ``message`` or ``detail``, else
    the error when it is text, else the whole body's text. ``status``: the answer's HTTP
    status; None (an error inside a stream) takes the error's ``code`` when that is an HTTP
    status, else 503 (the engine's failure: worth retrying)."""
    text: str | None = None
    if isinstance(body, (bytes, bytearray, memoryview)):
        body = bytes(body).decode(errors="replace")
    if isinstance(body, str):
        text = body
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(text)
    error = body.get("error", body) if isinstance(body, dict) else body
    message: Any = None
    param: Any = None
    code: Any = None
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail")
        param, code = error.get("param"), error.get("code")
    elif isinstance(error, str):
        message = error
    if not message:
        message = text if text else (str(error) if error is not None else "")
    if status is None:
        status = http_status(code) or HTTPStatus.SERVICE_UNAVAILABLE
    return UpstreamError(
        str(message) or f"HTTP {int(status)}",
        status_code=status,
        param=param if isinstance(param, str) else None,
    )
