"""``error_from_response``: each HTTP status and error body becomes the right exception."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelError,
    ModelInvalidRequestError,
    ModelNotFoundError,
    ModelPermissionDeniedError,
    ModelRateLimitError,
)

import langchain_vllm_autoscale as pkg
from langchain_vllm_autoscale._exceptions import (
    AuthenticationError,
    BadRequestError,
    ContextLengthError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    VLLMAutoscaleError,
    error_from_response,
)


def openai_error(message: str, *, param: str | None = None, code: Any = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": code}}  # fmt: skip


@pytest.mark.parametrize(
    ("status", "cls", "core_cls"),
    [
        (400, BadRequestError, ModelInvalidRequestError),
        (401, AuthenticationError, ModelAuthenticationError),
        (403, PermissionDeniedError, ModelPermissionDeniedError),
        (404, NotFoundError, ModelNotFoundError),
        (408, BadRequestError, ModelInvalidRequestError),
        (413, BadRequestError, ModelInvalidRequestError),
        (422, BadRequestError, ModelInvalidRequestError),
        (429, RateLimitError, ModelRateLimitError),
        (500, ServiceUnavailableError, ModelAPIError),
        (502, ServiceUnavailableError, ModelAPIError),
        (503, ServiceUnavailableError, ModelAPIError),
        (504, ServiceUnavailableError, ModelAPIError),
    ],
)
def test_status_maps_to_class(
    status: int, cls: type[VLLMAutoscaleError], core_cls: type[ModelError]
) -> None:
    err = error_from_response(status, openai_error("something went wrong"))
    assert type(err) is cls
    assert isinstance(err, VLLMAutoscaleError) and isinstance(err, core_cls)
    assert err.status_code == status
    assert err.message == "something went wrong"
    assert str(err) == f"something went wrong (HTTP {status})"


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 2048 tokens. However, you requested 4000 tokens",
        "Input is too long for the model's context length",
        "prompt is Too Long",
        "max_tokens must be at most max_model_len - prompt tokens",
    ],
)
@pytest.mark.parametrize("status", [400, 413, 422])
def test_context_overflow_becomes_context_length_error(message: str, status: int) -> None:
    err = error_from_response(status, openai_error(message, param="messages"))
    assert type(err) is ContextLengthError
    # Catchable as either the client's bad-request error or LangChain's overflow error.
    assert isinstance(err, BadRequestError) and isinstance(err, ContextOverflowError)
    assert isinstance(err, ValueError)
    assert err.param == "messages"


@pytest.mark.parametrize("status", [401, 404, 429, 503])
def test_context_hints_only_apply_to_bad_requests(status: int) -> None:
    err = error_from_response(status, openai_error("maximum context length exceeded"))
    assert not isinstance(err, ContextLengthError)


@pytest.mark.parametrize(
    ("cls", "retryable"),
    [
        (AuthenticationError, False),
        (PermissionDeniedError, False),
        (NotFoundError, False),
        (BadRequestError, False),
        (ContextLengthError, False),
        (RateLimitError, True),
        (ServiceUnavailableError, True),
        (pkg.APIConnectionError, True),
        (pkg.APITimeoutError, True),
    ],
)
def test_is_retryable_follows_langchain(cls: type[VLLMAutoscaleError], retryable: bool) -> None:
    assert cls("x").is_retryable is retryable


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (openai_error("bad temperature"), "bad temperature"),
        ({"error": {"detail": "from detail"}}, "from detail"),
        ({"detail": "Not authenticated"}, "Not authenticated"),  # FastAPI's own shape
        ({"error": "plain string error"}, "plain string error"),
        ("upstream connect error", "upstream connect error"),
    ],
)
def test_message_is_taken_from_the_body(body: Any, expected: str) -> None:
    err = error_from_response(400, body)
    assert err.message == expected
    assert err.body == body  # the whole body stays available


@pytest.mark.parametrize("body", [None, "", {}, {"error": {}}, {"error": {"message": None}}])
def test_empty_bodies_fall_back_to_the_status(body: Any) -> None:
    err = error_from_response(418, body)
    assert err.message == "HTTP 418"
    assert str(err) == "HTTP 418 (HTTP 418)"


def test_long_text_bodies_are_truncated() -> None:
    page = "<html>" + "x" * 5000 + "</html>"
    err = error_from_response(502, page)
    assert len(err.message) == 500 and page.startswith(err.message)
    assert err.body == page


def test_request_id_is_kept_and_shown() -> None:
    err = error_from_response(429, openai_error("slow down"), request_id="req-123")
    assert err.request_id == "req-123"
    assert str(err) == "slow down (HTTP 429, request id req-123)"


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({}, "boom"),
        ({"status_code": 503}, "boom (HTTP 503)"),
        ({"request_id": "r1"}, "boom (request id r1)"),
        ({"status_code": 503, "request_id": "r1"}, "boom (HTTP 503, request id r1)"),
    ],
)
def test_message_formatting(kwargs: dict[str, Any], text: str) -> None:
    err = ServiceUnavailableError("boom", **kwargs)
    assert str(err) == text
    assert err.message == "boom"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (openai_error("bad", param="temperature"), "temperature"),
        (openai_error("bad"), None),
        ({"detail": "bad"}, None),
        ({"error": None}, None),
        ("text body", None),
    ],
)
def test_bad_request_param(body: Any, param: str | None) -> None:
    err = error_from_response(400, body)
    assert isinstance(err, BadRequestError)
    assert err.param == param


def test_public_exports() -> None:
    for name in (
        "APIConnectionError", "APITimeoutError", "AuthenticationError", "BadRequestError",
        "ContextLengthError", "NotFoundError", "PermissionDeniedError", "RateLimitError",
        "ServiceUnavailableError", "VLLMAutoscaleError",
    ):  # fmt: skip
        cls = getattr(pkg, name)
        assert issubclass(cls, VLLMAutoscaleError) and issubclass(cls, ModelError)
