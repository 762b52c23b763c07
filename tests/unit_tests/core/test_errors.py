"""The error tree (deploy/core/errors.py): every ``ServiceError`` answers OpenAI's one wire shape
and pickles whole (errors cross Modal), whatever its own constructor takes; other servers'
error answers are read once (``error_from_body``)."""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import pytest

from deploy.core import errors
from deploy.core.errors import (
    AuthError,
    ClientGone,
    EngineError,
    EngineRequestError,
    EngineStartError,
    EngineUnavailable,
    Forbidden,
    InvalidRequest,
    Overloaded,
    ServiceError,
    StoreUnavailable,
    UpstreamError,
    error_body,
    error_from_body,
    http_status,
)


def elsewhere(module: str, name: str, *args: Any, **kwargs: Any) -> list[Exception]:
    """One instance of a class the tree draws but another module defines (none while that
    module is not there, or the class has moved: the coverage check below names it then)."""
    try:
        cls = getattr(importlib.import_module(module), name)
        return [cls(*args, **kwargs)]
    except (ImportError, AttributeError, TypeError):
        return []


# One instance of every class of the tree (those defined elsewhere once they derive from
# ServiceError: until then they are left out of the checks below).
SAMPLES: list[Callable[[], list[Exception]]] = [
    lambda: [ServiceError("plain")],
    lambda: [ServiceError("all", status_code=409, error_type="conflict", param="name",
                          code="taken", retry_after=2.5)],
    lambda: [InvalidRequest("too many", "n", HTTPStatus.BAD_REQUEST)],
    lambda: [AuthError()],
    lambda: [Forbidden("key 'bob' is not an admin key")],
    lambda: [ClientGone()],
    lambda: [EngineError("engine", retry_after=5)],
    lambda: [EngineRequestError("too long", status_code=413, param="messages")],
    lambda: [EngineUnavailable("the engine is not running", retry_after=5)],
    lambda: [EngineStartError("out of memory", detail="a long log tail", retry_after=30)],
    lambda: [Overloaded("queue full", status_code=429, retry_after=3)],
    lambda: [StoreUnavailable("the state store is down", retry_after=5)],
    lambda: [UpstreamError("vLLM said no", status_code=400)],
    lambda: elsewhere("deploy.gateway.limiter", "LimitExceeded", "k", "tpm", 1000, 12.5),
    lambda: elsewhere("deploy.gateway.limiter", "LimitExceeded", "k", "monthly_budget_usd", 5,
                      86400),
    lambda: elsewhere("deploy.wrapper.tokenize.counter", "TokenCountError", "no tokenizer",
                      status=501),
    lambda: elsewhere("deploy.wrapper.tokenize.counter", "TokenCountError", "bad",
                      param="messages.0"),
    lambda: elsewhere("deploy.ops.cli", "CliError", "cannot reach the wrapper", "is --url right?"),
]  # fmt: skip
INSTANCES = [exc for make in SAMPLES for exc in make()]
SERVICE_ERRORS = [e for e in INSTANCES if isinstance(e, ServiceError)]


def _subclasses(cls: type) -> set[type]:
    out: set[type] = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def _project(cls: type) -> bool:
    return cls.__module__.startswith("deploy.")


def test_every_class_of_the_tree_has_a_sample() -> None:
    tree = {c for c in _subclasses(ServiceError) if _project(c)} | {ServiceError}
    assert tree <= {type(e) for e in SERVICE_ERRORS}, tree - {type(e) for e in SERVICE_ERRORS}


def test_the_engine_s_errors_and_the_wrapper_s_share_the_base() -> None:
    for cls in (EngineError, EngineStartError, StoreUnavailable, InvalidRequest, AuthError,
                Forbidden, ClientGone, UpstreamError):  # fmt: skip
        assert issubclass(cls, ServiceError), cls
    assert issubclass(EngineStartError, EngineUnavailable)
    assert issubclass(StoreUnavailable, EngineError) and issubclass(UpstreamError, EngineError)


def test_the_module_docstring_draws_every_class() -> None:
    assert (errors.__doc__ or "").count("\n    ServiceError ") == 1  # the root
    for name in errors.__all__:
        if isinstance(getattr(errors, name), type) and name != "ServiceError":
            assert f"── {name} " in (errors.__doc__ or ""), name
    for cls in _subclasses(ServiceError):
        if _project(cls):
            assert f"── {cls.__name__} " in (errors.__doc__ or ""), cls


def _ids(values: list[Any]) -> list[str]:
    return [f"{type(v).__name__}-{i}" for i, v in enumerate(values)]


@pytest.mark.parametrize("exc", SERVICE_ERRORS, ids=_ids(SERVICE_ERRORS))
def test_every_service_error_pickles_whole(exc: ServiceError) -> None:
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is type(exc)
    assert again.args == exc.args and str(again) == str(exc)
    assert again.status_code == exc.status_code and again.message == exc.message
    assert again.to_body() == exc.to_body() and again.headers() == exc.headers()
    kept = {k: v for k, v in vars(exc).items() if k not in type(exc)._not_pickled}
    assert vars(again) == kept


@pytest.mark.parametrize("exc", SERVICE_ERRORS, ids=_ids(SERVICE_ERRORS))
def test_every_service_error_answers_the_one_wire_shape(exc: ServiceError) -> None:
    body = exc.to_body()
    assert list(body) == ["error"]
    assert list(body["error"]) == ["message", "type", "param", "code"]
    assert body["error"]["message"] == exc.message == str(exc)
    assert isinstance(body["error"]["type"], str) and body["error"]["type"]
    assert body["error"]["param"] is None or isinstance(body["error"]["param"], str)
    assert 400 <= int(exc.status_code) <= 599
    if exc.retry_after is None:
        assert "Retry-After" not in exc.headers()
    else:
        assert exc.headers()["Retry-After"] == str(int(exc.retry_after))


def test_a_start_error_s_log_tail_stays_where_it_was_raised() -> None:
    exc = EngineStartError("out of memory", detail="/home/me/secret path\nTraceback ...")
    again = pickle.loads(pickle.dumps(exc))
    assert exc.detail and again.detail == ""
    assert again.to_body() == exc.to_body()


def test_the_wire_shapes_are_today_s() -> None:
    assert InvalidRequest("bad", "temperature").to_body() == error_body(
        "bad", param="temperature", code=422
    )
    assert InvalidRequest("taken", "name", HTTPStatus.CONFLICT).status == 409
    auth = AuthError()
    assert (auth.status_code, auth.to_body(), auth.headers()) == (
        401,
        error_body("missing or invalid API key: send 'Authorization: Bearer <key>'",
                   type="authentication_error", code=401),
        {"WWW-Authenticate": "Bearer"},
    )  # fmt: skip
    assert Forbidden("no").to_body() == error_body("no", type="permission_error", code=403)
    assert ClientGone().status_code == 499
    engine = EngineUnavailable("down", retry_after=5.9)
    assert engine.to_body() == error_body("down", type="engine_unavailable", code=503)
    assert engine.headers() == {"Retry-After": "5"}
    assert EngineRequestError("long", status_code=400, param="messages").to_body() == error_body(
        "long", param="messages", code=400
    )
    assert Overloaded("full").to_body()["error"]["type"] == "overloaded"
    assert StoreUnavailable("down").to_body()["error"]["type"] == "state_store_unavailable"


class Limited(ServiceError):
    """A subclass the way others derive: its own constructor and attributes, a ``code``
    property, attributes set before the base's constructor runs."""

    status_code = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, limit: str, retry_after: float) -> None:
        self.limit, self.retry_after = limit, retry_after
        super().__init__(f"over {limit}", error_type=limit)

    @property
    def code(self) -> str:
        return "rate_limit_exceeded"


def test_arguments_left_out_keep_what_the_class_or_a_subclass_set() -> None:
    exc = Limited("rpm", 7)
    assert exc.to_body() == error_body("over rpm", type="rpm", code="rate_limit_exceeded")
    assert exc.status_code == 429 and exc.headers() == {"Retry-After": "7"}
    again = pickle.loads(pickle.dumps(exc))
    assert (again.limit, again.to_body(), again.headers()) == ("rpm", exc.to_body(), exc.headers())
    assert ServiceError("x", code="named").to_body()["error"]["code"] == "named"


# -- other servers' error answers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        # vLLM's (and OpenAI's) shape, as bytes, text or parsed
        (
            400,
            b'{"error": {"message": "too long", "type": "BadRequestError", "param": "messages",'
            b' "code": 400}}',
            (400, "too long", "messages"),
        ),
        (
            404,
            '{"error": {"message": "no such adapter", "code": 404}}',
            (404, "no such adapter", None),
        ),
        (400, {"error": {"message": "parsed", "param": "n"}}, (400, "parsed", "n")),
        # vLLM's older top-level shape; FastAPI's detail
        (400, '{"object": "error", "message": "old", "param": "p"}', (400, "old", "p")),
        (422, '{"detail": "Not Found"}', (422, "Not Found", None)),
        # no message: the body's text; not JSON: the text; an error that is text
        (500, '{"error": {"code": 500}}', (500, '{"error": {"code": 500}}', None)),
        (502, b"<html>Bad Gateway</html>", (502, "<html>Bad Gateway</html>", None)),
        (500, '{"error": "boom"}', (500, "boom", None)),
        (503, b"", (503, "HTTP 503", None)),
        (400, b"\xff\xfe broken", (400, "\ufffd\ufffd broken", None)),
        # inside a stream (no status): the code when it is an HTTP status, else 503
        (None, '{"error": {"message": "m", "code": 429}}', (429, "m", None)),
        (None, '{"error": {"message": "m", "code": "404"}}', (404, "m", None)),
        (None, '{"error": {"message": "m", "code": "rate_limited"}}', (503, "m", None)),
        (None, '{"error": {"message": "m", "code": true}}', (503, "m", None)),
        (None, '{"error": {"message": "m"}}', (503, "m", None)),
        (None, "plain text", (503, "plain text", None)),
    ],
)
def test_error_from_body(status: int | None, body: Any, expected: tuple[Any, ...]) -> None:
    error = error_from_body(status, body)
    assert isinstance(error, UpstreamError) and isinstance(error, EngineError)
    assert (error.status_code, error.message, error.param) == expected
    assert error.to_body()["error"]["code"] == expected[0]


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (400, 400),
        (599, 599),
        ("503", 503),
        (200, None),
        (600, None),
        (True, None),
        ("x", None),
        (None, None),
        (400.0, None),
    ],
)
def test_http_status(code: Any, status: int | None) -> None:
    assert http_status(code) == status
