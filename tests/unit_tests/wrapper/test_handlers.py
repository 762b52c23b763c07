"""The wrapper's exception handlers (deploy/wrapper/handlers.py): one for every ``ServiceError``,
the framework's own beside it, and each error's answer exactly as callers got it before the
errors shared one tree (status, OpenAI's body, headers)."""

from __future__ import annotations

from collections import Counter
from http import HTTPStatus
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from deploy.core.errors import (
    AuthError,
    ClientGone,
    EngineRequestError,
    EngineUnavailable,
    Forbidden,
    InvalidRequest,
    Overloaded,
    ServiceError,
    StoreUnavailable,
    error_body,
)
from deploy.gateway import LimitExceeded
from deploy.wrapper import handlers


class Metrics:
    def __init__(self) -> None:
        self.keys: Counter[tuple[str, str]] = Counter()

    def count_key(self, key: str, outcome: str) -> None:
        self.keys[key, outcome] += 1


def app_raising(exc: BaseException) -> FastAPI:
    app = FastAPI()
    handlers.install(app)
    app.state.metrics = Metrics()

    @app.get("/raise")
    async def _raise(request: Request) -> None:
        raise exc

    return app


async def answer(exc: BaseException) -> tuple[httpx.Response, FastAPI]:
    app = app_raising(exc)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get("/raise"), app


def test_one_handler_for_the_tree_and_the_framework_s_own() -> None:
    app = FastAPI()
    handlers.install(app)
    framework = set(FastAPI().exception_handlers) | {
        Exception, RequestValidationError, StarletteHTTPException, ClientDisconnect,
    }  # fmt: skip
    # LimitExceeded keeps its own handler only until it derives from ServiceError.
    transitional = set() if issubclass(LimitExceeded, ServiceError) else {LimitExceeded}
    ours = set(app.exception_handlers) - framework
    assert ours == {ServiceError} | transitional, ours


LIMITED = LimitExceeded("alice", "tpm", 1000, 12.5)
BROKE = LimitExceeded("alice", "monthly_budget_usd", 5, 86400)

# Each error, and the status, body and headers it was answered with before one tree.
ANSWERS: list[tuple[BaseException, int, dict[str, Any] | None, dict[str, str]]] = [
    (InvalidRequest("bad", "temperature"), 422,
     error_body("bad", param="temperature", code=422), {}),
    (InvalidRequest("taken", "name", HTTPStatus.CONFLICT), 409,
     error_body("taken", param="name", code=409), {}),
    (AuthError(), 401,
     error_body("missing or invalid API key: send 'Authorization: Bearer <key>'",
                type="authentication_error", code=401),
     {"www-authenticate": "Bearer"}),
    (Forbidden("key 'bob' is not an admin key"), 403,
     error_body("key 'bob' is not an admin key", type="permission_error", code=403), {}),
    (EngineUnavailable("down", retry_after=5), 503,
     error_body("down", type="engine_unavailable", code=503), {"retry-after": "5"}),
    (EngineRequestError("too long", status_code=400, param="messages"), 400,
     error_body("too long", param="messages", code=400), {}),
    (Overloaded("full", status_code=429, retry_after=2.7), 429,
     error_body("full", type="overloaded", code=429), {"retry-after": "2"}),
    (StoreUnavailable("the store is down", retry_after=5), 503,
     error_body("the store is down", type="state_store_unavailable", code=503),
     {"retry-after": "5"}),
    (LIMITED, 429,
     error_body(str(LIMITED), type="tpm", param=None, code="rate_limit_exceeded"),
     {"retry-after": "13"}),
    (BROKE, 429,
     error_body(str(BROKE), type="monthly_budget_usd", param=None, code="insufficient_quota"),
     {"retry-after": "86400"}),
    (ClientGone(), 499, None, {}),
    (ClientDisconnect(), 499, None, {}),
    (RuntimeError("a bug with a secret in it"), 500,
     error_body("internal error in the wrapper", type="internal_error", code=500), {}),
    (StarletteHTTPException(405, "Method Not Allowed"), 405,
     error_body("Method Not Allowed", code=405), {}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("exc", "status", "body", "headers"), ANSWERS, ids=[type(a[0]).__name__ for a in ANSWERS]
)
async def test_each_error_is_answered_as_before(
    exc: BaseException, status: int, body: dict[str, Any] | None, headers: dict[str, str]
) -> None:
    response, _ = await answer(exc)
    assert response.status_code == status
    if body is None:
        assert response.content == b""
    else:
        assert response.json() == body
    for name, value in headers.items():
        assert response.headers.get(name) == value, (name, response.headers)
    if "retry-after" not in headers:
        assert "retry-after" not in response.headers


async def test_a_key_over_its_limit_is_counted() -> None:
    response, app = await answer(LimitExceeded("alice", "rpm", 10, 3))
    assert response.status_code == 429
    assert app.state.metrics.keys == {("alice", "limited:rpm"): 1}


def test_the_serving_code_s_name_for_the_response_is_the_one() -> None:
    exc = EngineUnavailable("down", retry_after=5)
    response = handlers.engine_error_response(exc)
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert handlers.engine_error_response is handlers.service_error_response
