"""Errors raised between the engine and the wrapper.

Every failure that crosses the engine boundary is an ``EngineError`` carrying the HTTP status
the wrapper should answer with and an OpenAI-shaped error body. They pickle cleanly, because on
Modal they are raised inside the GPU container and re-raised in the wrapper.

    EngineError
    ├── EngineRequestError   the engine rejected the request (4xx from vLLM: bad params, too long)
    ├── EngineUnavailable    the engine is not there: not started, died, or connection lost (503)
    │   └── EngineStartError the engine failed to start; carries the reason from its log
    ├── Overloaded           the wrapper's wait queue is full or the wait timed out (503/429)
    └── StoreUnavailable     the gateway's state store cannot be read: keys and usage unknown (503)
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

__all__ = [
    "EngineError",
    "EngineRequestError",
    "EngineStartError",
    "EngineUnavailable",
    "Overloaded",
    "StoreUnavailable",
    "error_body",
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


class EngineError(Exception):
    """Base class: an error with the HTTP status and body the wrapper answers with."""

    status_code: int = HTTPStatus.SERVICE_UNAVAILABLE
    error_type: str = "engine_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = int(status_code)
        self.param = param
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (type(self), self.message, self.status_code, self.param, self.retry_after),
        )

    def to_body(self) -> dict[str, Any]:
        return error_body(
            self.message, type=self.error_type, param=self.param, code=self.status_code
        )


def _rebuild(
    cls: type[EngineError],
    message: str,
    status_code: int,
    param: str | None,
    retry_after: float | None,
) -> EngineError:
    return cls(message, status_code=status_code, param=param, retry_after=retry_after)


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
