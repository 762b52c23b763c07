"""Errors the client raises. Each is also the matching ``langchain_core`` model error, so code
that catches LangChain's provider-neutral exceptions (or ``ModelError.is_retryable``) works.

    VLLMAutoscaleError
    ├── AuthenticationError        401: missing or wrong API key   (ModelAuthenticationError)
    ├── PermissionDeniedError      403                             (ModelPermissionDeniedError)
    ├── NotFoundError              404: wrong URL or model name    (ModelNotFoundError)
    ├── BadRequestError            400/413/422: invalid request    (ModelInvalidRequestError)
    │   └── ContextLengthError     prompt + max_tokens too long    (ContextOverflowError)
    ├── RateLimitError             429                             (ModelRateLimitError)
    ├── ServiceUnavailableError    5xx: engine down, overloaded, failed to start (ModelAPIError)
    ├── APIConnectionError         the wrapper cannot be reached   (ModelConnectionError)
    └── APITimeoutError            no answer within ``timeout``    (ModelTimeoutError)
"""

from __future__ import annotations

from typing import Any

from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelError,
    ModelInvalidRequestError,
    ModelNotFoundError,
    ModelPermissionDeniedError,
    ModelRateLimitError,
    ModelTimeoutError,
)

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ContextLengthError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "VLLMAutoscaleError",
    "error_from_event",
    "error_from_response",
]


class VLLMAutoscaleError(ModelError):
    """Base class of every error raised by ``ChatVLLMAutoscale``."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: Any = None,
        request_id: str | None = None,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.body = body
        self.request_id = request_id
        detail = f" (HTTP {status_code}" if status_code else ""
        if request_id:
            detail += f", request id {request_id}" if detail else f" (request id {request_id}"
        super().__init__(message + (detail + ")" if detail else ""))


class AuthenticationError(VLLMAutoscaleError, ModelAuthenticationError):
    """The wrapper refused the API key (set ``api_key`` or ``VLLM_AUTOSCALE_API_KEY``)."""


class PermissionDeniedError(VLLMAutoscaleError, ModelPermissionDeniedError):
    """The key is valid but not allowed to do this."""


class NotFoundError(VLLMAutoscaleError, ModelNotFoundError):
    """Wrong ``base_url`` path, or a model the service does not serve."""


class BadRequestError(VLLMAutoscaleError, ModelInvalidRequestError, ValueError):
    """The service rejected the request as invalid; ``param`` names the field."""

    @property
    def param(self) -> str | None:
        if isinstance(self.body, dict):
            return (self.body.get("error") or {}).get("param")
        return None


class ContextLengthError(BadRequestError, ContextOverflowError):
    """The prompt plus ``max_tokens`` does not fit the model's context window."""


class RateLimitError(VLLMAutoscaleError, ModelRateLimitError):
    """Too many requests; retried automatically up to ``max_retries``."""


class ServiceUnavailableError(VLLMAutoscaleError, ModelAPIError):
    """The engine failed, is overloaded, or could not start (5xx)."""


class APIConnectionError(VLLMAutoscaleError, ModelConnectionError):
    """The wrapper could not be reached (wrong URL, network down)."""


class APITimeoutError(VLLMAutoscaleError, ModelTimeoutError):
    """No answer within ``timeout`` seconds (a first cold start can take minutes)."""


_CONTEXT_HINTS = ("maximum context length", "context length", "too long", "max_model_len")


def error_from_response(
    status_code: int, body: Any, request_id: str | None = None
) -> VLLMAutoscaleError:
    """Map an HTTP error answer to the matching exception, keeping the server's message."""
    message = _message_of(body) or f"HTTP {status_code}"
    cls: type[VLLMAutoscaleError]
    if status_code == 401:
        cls = AuthenticationError
    elif status_code == 403:
        cls = PermissionDeniedError
    elif status_code == 404:
        cls = NotFoundError
    elif status_code == 429:
        cls = RateLimitError
    elif status_code >= 500:
        cls = ServiceUnavailableError
    elif any(hint in message.lower() for hint in _CONTEXT_HINTS):
        cls = ContextLengthError
    else:
        cls = BadRequestError
    return cls(message, status_code=status_code, body=body, request_id=request_id)


def error_from_event(body: Any) -> VLLMAutoscaleError:
    """An error event of a stream (its data: parsed JSON, or text) as the matching exception.
    Its status is the error's numeric ``code`` (the wrapper's and vLLM's), else 400 for an
    OpenAI-style named code, else 503."""
    error = body.get("error", body) if isinstance(body, dict) else body
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, int) or (isinstance(code, str) and code.isdigit()):
        status = int(code)
    else:
        status = 400 if code else 503
    return error_from_response(status, body)


def _message_of(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or "")
        return str(err)
    return str(body or "")[:500]
