"""Non-finite numbers in request bodies, offline: ``NaN``, ``Infinity``, ``-Infinity`` (which
Python's and pydantic's JSON parsers accept, though JSON has no such values) and numbers too
large for a double (``1e400`` parses as infinity) are refused with a 422 naming the field,
on every route that reads a body, wherever they sit (typed fields, pass-through fields,
messages, tools); never a 500, and the engine is not asked."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.exceptions import RequestValidationError

from deploy.wrapper import create_app, handlers
from tests.unit_tests.wrapper_fake import (
    FakeTransport,
    app_for,
    assert_error,
    client_for,
    make_settings,
)

CHAT = "/v1/chat/completions"
MESSAGES = '[{"role": "user", "content": "hi"}]'


def asking(fields: str) -> str:
    """A chat body's raw JSON: the messages, then ``fields`` (raw JSON too)."""
    return '{"messages": ' + MESSAGES + ", " + fields + "}"


# (route, raw JSON body, the param the 422 names)
CASES: list[tuple[str, str, str]] = [
    (CHAT, asking('"temperature": NaN'), "temperature"),
    (CHAT, asking('"temperature": Infinity'), "temperature"),
    (CHAT, asking('"temperature": -Infinity'), "temperature"),
    (CHAT, asking('"top_p": NaN'), "top_p"),
    (CHAT, asking('"presence_penalty": 1e400'), "presence_penalty"),
    # pass-through fields go to vLLM unread: still checked
    (CHAT, asking('"repetition_penalty": NaN'), "repetition_penalty"),
    (CHAT, asking('"min_p": -1e400'), "min_p"),
    (CHAT, asking('"extra": {"a": [1, Infinity]}'), "extra.a.1"),
    (CHAT, '{"messages": [{"role": "user", "content": NaN}]}', "messages.0.content"),
    (CHAT, '{"messages": [{"role": "user", "content": "hi", "weight": NaN}]}',
     "messages.0.weight"),
    (CHAT, '{"messages": [{"role": "user", "content": [{"type": "text", "text": "x", '
           '"score": -Infinity}]}]}', "messages.0.content.0.score"),
    (CHAT, asking('"tools": [{"type": "function", "function": {"name": "f", '
                  '"parameters": {"maximum": Infinity}}}]'),
     "tools.0.function.parameters.maximum"),
    (CHAT, asking('"stream": true, "temperature": NaN'), "temperature"),
    (CHAT, asking('"stream": true, "logit_bias": {"42": Infinity}'), "logit_bias.42"),
    ("/chat", asking('"temperature": NaN'), "temperature"),
    ("/chat", asking('"temperature": Infinity'), "temperature"),
    (CHAT + "/batch", '{"requests": [' + asking('"temperature": NaN') + "]}",
     "requests.0.temperature"),
    (CHAT + "/batch", '{"requests": [' + asking('"n": 1') + ", "
     + asking('"seed_x": Infinity') + "]}", "requests.1.seed_x"),
    (CHAT + "/batch", '{"requests": [' + asking('"n": 1') + '], "max_concurrency": NaN}',
     "max_concurrency"),
    ("/tokenize", asking('"chat_template_kwargs": {"a": NaN}'), "chat_template_kwargs.a"),
    ("/tokenize", '{"prompt": "x", "add_special_tokens": Infinity}', "add_special_tokens"),
]  # fmt: skip


@pytest.mark.parametrize(("url", "raw", "param"), CASES)
async def test_a_non_finite_number_is_a_422_naming_its_field(
    url: str, raw: str, param: str
) -> None:
    app, fake = app_for()
    async with client_for(app, raise_app_exceptions=False) as client:
        response = await client.post(url, content=raw, headers={"content-type": "application/json"})
    error = assert_error(response, 422, param=param)
    assert "finite" in error["message"], error
    assert (fake.chat_bodies, fake.stream_bodies, fake.batch_calls) == ([], [], [])


async def test_the_words_and_finite_extremes_still_pass() -> None:
    """Only numbers are checked: text saying NaN or Infinity, and the largest doubles, pass."""
    app, fake = app_for()
    raw = (
        '{"messages": [{"role": "user", "content": "NaN, Infinity, -Infinity and 1e400"}], '
        '"temperature": 1e-300, "foo": [1.7976931348623157e308, -1.7976931348623157e308], '
        '"bar": {"NaN": "Infinity"}}'
    )
    async with client_for(app) as client:
        response = await client.post(CHAT, content=raw,
                                     headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 200, response.text
    [body] = fake.chat_bodies
    assert body["foo"] == [1.7976931348623157e308, -1.7976931348623157e308]
    assert body["bar"] == {"NaN": "Infinity"}


def _admin_app() -> tuple[Any, FakeTransport]:
    # A memory store: a key made by a failing test must not outlive it.
    fake = FakeTransport()
    return create_app(fake, make_settings(state_url="memory://")), fake


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_admin_bodies_refuse_non_finite_numbers(number: str) -> None:
    app, _ = _admin_app()
    async with client_for(app, raise_app_exceptions=False) as client:
        key = await client.post(
            "/v1/keys", content='{"name": "nonfinite", "monthly_budget_usd": ' + number + "}",
            headers={"content-type": "application/json"},
        )  # fmt: skip
        adapter = await client.post(
            "/v1/adapters", content='{"name": "lora", "path": ' + number + "}",
            headers={"content-type": "application/json"},
        )  # fmt: skip
        keys = (await client.get("/v1/keys")).json()["data"]
    assert_error(key, 422, param="monthly_budget_usd")
    assert "nonfinite" not in {k["name"] for k in keys}  # no key with an unbounded budget
    assert_error(adapter, 422, param="path")


async def test_a_validation_error_echoing_a_non_finite_input_is_still_json() -> None:
    """A 422's ``detail`` echoes the rejected input: a non-finite one (from a route FastAPI
    parses itself) goes out as text (JSON has no NaN), not as a failure to write the answer."""
    errors = [{"type": "less_than_equal", "loc": ("body", "temperature"),
               "msg": "Input should be less than or equal to 2", "input": float("nan"),
               "ctx": {"le": 2}}]  # fmt: skip
    response = await handlers._validation_error(None, RequestValidationError(errors))  # type: ignore[arg-type]
    assert response.status_code == 422
    body = orjson.loads(response.body)  # strict JSON throughout (no NaN)
    assert body["error"]["param"] == "temperature"
    assert body["detail"][0]["input"] == "NaN"
