"""``ChatVLLMAutoscale`` end to end over ``httpx.MockTransport``: a recorded wrapper stands in
for the service (invoke, stream, batch, tools, structured output, errors), no network."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from pydantic import BaseModel, SecretStr

from langchain_vllm_autoscale import (
    AuthenticationError,
    BadRequestError,
    ChatVLLMAutoscale,
    ContextLengthError,
    ServiceUnavailableError,
    _http,
)

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
API_KEY = "sk-offline-test-key-987654321"
USAGE = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
COLD = {"request_id": "req-cold", "cold_start": True, "queue_wait_ms": 45000.0,
        "engine_ms": 300.0, "cost": 0.0125}  # fmt: skip


def completion(content: str | None, **message: Any) -> dict[str, Any]:
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": finish,
            }
        ],
        "usage": USAGE,
        "vllm_autoscale": COLD,
    }


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


STREAM_EVENTS: list[dict[str, Any] | str] = [
    ": keep-alive",  # the wrapper's heartbeats while the GPU wakes
    ": keep-alive",
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Bon"}),
    chunk({"content": "jour"}),
    chunk({}, "stop"),
    {"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": MODEL, "choices": [],
     "usage": USAGE, "vllm_autoscale": COLD},
    "[DONE]",
]  # fmt: skip


def sse_body(events: list[dict[str, Any] | str]) -> bytes:
    lines = []
    for item in events:
        if isinstance(item, str) and item.startswith(":"):
            lines.append(item + "\n\n")
        else:
            lines.append("data: " + (item if isinstance(item, str) else json.dumps(item)) + "\n\n")
    return "".join(lines).encode()


def last_user_text(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


class FakeWrapper:
    """Answers like the wrapper; records every request as (method, path, JSON body)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.requests: list[httpx.Request] = []
        # Per-call overrides: path -> list of callables answering in turn.
        self.queued: dict[str, list[Callable[[dict[str, Any]], httpx.Response]]] = {}
        self.completion: Callable[[dict[str, Any]], dict[str, Any]] = lambda body: completion(
            "echo: " + last_user_text(body)
        )
        self.stream_events = STREAM_EVENTS
        self.batch_errors: dict[int, dict[str, Any]] = {}

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.calls]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body: dict[str, Any] = json.loads(request.content) if request.content else {}
        self.calls.append((request.method, request.url.path, body))
        self.requests.append(request)
        queued = self.queued.get(request.url.path)
        if queued:
            return queued.pop(0)(body)
        path = request.url.path
        if path == "/v1/chat/completions" and body.get("stream"):
            return httpx.Response(
                200,
                content=sse_body(self.stream_events),
                headers={"content-type": "text/event-stream"},
            )
        if path == "/v1/chat/completions":
            return httpx.Response(200, json=self.completion(body))
        if path == "/v1/chat/completions/batch":
            results = []
            for i, item in enumerate(body["requests"]):
                if i in self.batch_errors:
                    results.append({"index": i, **self.batch_errors[i]})
                else:
                    results.append(
                        {"index": i, "status_code": 200, "response": self.completion(item)}
                    )
            # Results may come back in any order: the client sorts them by index.
            answer = {"object": "batch.chat.completion", "results": results[::-1]}
            return httpx.Response(200, json=answer | {"vllm_autoscale": COLD})
        if path == "/warmup":
            return httpx.Response(200, json={"state": "starting"})
        if path == "/status":
            return httpx.Response(200, json={"state": "cold", "queue": 0})
        return httpx.Response(404, json={"detail": "Not Found"})


@pytest.fixture
def wrapper() -> FakeWrapper:
    return FakeWrapper()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Back-off delays are recorded, never slept."""
    delays: list[float] = []

    class _Asyncio:
        async def sleep(self, delay: float) -> None:
            delays.append(delay)

        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

    monkeypatch.setattr(_http, "time", SimpleNamespace(sleep=delays.append))
    monkeypatch.setattr(_http, "asyncio", _Asyncio())
    return delays


def make_llm(wrapper: FakeWrapper, **kwargs: Any) -> ChatVLLMAutoscale:
    transport = httpx.MockTransport(wrapper)
    return ChatVLLMAutoscale(
        base_url="http://wrapper.test",
        api_key=SecretStr(API_KEY),
        http_transport=transport,
        http_async_transport=transport,
        **kwargs,
    )


def check_answer(message: BaseMessage, text: str) -> None:
    assert isinstance(message, AIMessage)
    assert message.content == text
    assert message.usage_metadata == {"input_tokens": 11, "output_tokens": 2, "total_tokens": 13}
    meta = message.response_metadata
    assert meta["model_name"] == MODEL and meta["finish_reason"] == "stop"
    assert meta["model_provider"] == "vllm-autoscale"
    assert meta["service"]["cold_start"] is True
    assert meta["service"]["request_id"] == "req-cold"


# -- invoke ---------------------------------------------------------------------------------------


def test_invoke(wrapper: FakeWrapper) -> None:
    llm = make_llm(wrapper, temperature=0, max_tokens=16, extra_body={"top_k": 5})
    message = llm.invoke("Say hello in French.")
    check_answer(message, "echo: Say hello in French.")
    ((method, path, body),) = wrapper.calls
    assert (method, path) == ("POST", "/v1/chat/completions")
    assert body == {
        "messages": [{"role": "user", "content": "Say hello in French."}],
        "temperature": 0,
        "max_tokens": 16,
        "top_k": 5,
    }
    assert wrapper.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


async def test_ainvoke(wrapper: FakeWrapper) -> None:
    llm = make_llm(wrapper)
    message = await llm.ainvoke([HumanMessage("Hi")], stop=["\n"])
    check_answer(message, "echo: Hi")
    assert wrapper.calls[0][2]["stop"] == ["\n"]
    await llm.aclose()


def test_invoke_retries_a_cold_start(wrapper: FakeWrapper, sleeps: list[float]) -> None:
    wrapper.queued["/v1/chat/completions"] = [
        lambda _: httpx.Response(
            503, json={"error": {"message": "engine starting"}}, headers={"Retry-After": "5"}
        )
    ]
    message = make_llm(wrapper).invoke("Hi")
    check_answer(message, "echo: Hi")
    assert wrapper.paths() == ["/v1/chat/completions"] * 2
    assert sleeps == [5.0]


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (401, {"error": {"message": "invalid API key"}}, AuthenticationError),
        (400, {"error": {"message": "maximum context length is 2048 tokens"}}, ContextLengthError),
        (422, {"detail": [{"loc": ["body", "temperature"], "msg": "bad"}]}, BadRequestError),
    ],
)
def test_invoke_errors(
    wrapper: FakeWrapper, status: int, body: dict[str, Any], cls: type[Exception]
) -> None:
    wrapper.queued["/v1/chat/completions"] = [lambda _: httpx.Response(status, json=body)]
    with pytest.raises(cls) as info:
        make_llm(wrapper).invoke("Hi")
    assert API_KEY not in str(info.value)
    assert len(wrapper.calls) == 1


def test_invoke_gives_up_on_a_service_that_stays_down(
    wrapper: FakeWrapper, sleeps: list[float]
) -> None:
    down = lambda _: httpx.Response(503, json={"error": {"message": "engine failed"}})  # noqa: E731
    wrapper.queued["/v1/chat/completions"] = [down, down, down]
    with pytest.raises(ServiceUnavailableError, match="engine failed"):
        make_llm(wrapper, max_retries=2).invoke("Hi")
    assert len(wrapper.calls) == 3 and len(sleeps) == 2


def test_tool_calls(wrapper: FakeWrapper) -> None:
    class GetWeather(BaseModel):
        """Weather for a city."""

        city: str

    wrapper.completion = lambda _: completion(
        None,
        tool_calls=[
            {"id": "call-1", "type": "function",
             "function": {"name": "GetWeather", "arguments": '{"city": "Paris"}'}},
            {"id": "call-2", "type": "function",
             "function": {"name": "GetWeather", "arguments": '{"city": '}},
        ],
    )  # fmt: skip
    llm = make_llm(wrapper).bind_tools([GetWeather], tool_choice="GetWeather")
    message = llm.invoke("Weather in Paris?")
    assert isinstance(message, AIMessage)
    assert message.content == ""
    assert message.tool_calls == [
        {"name": "GetWeather", "args": {"city": "Paris"}, "id": "call-1", "type": "tool_call"}
    ]
    assert [c["id"] for c in message.invalid_tool_calls] == ["call-2"]
    body = wrapper.calls[0][2]
    assert body["tools"][0]["function"]["name"] == "GetWeather"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "GetWeather"}}


def test_structured_output(wrapper: FakeWrapper) -> None:
    class Person(BaseModel):
        name: str
        born: int

    wrapper.completion = lambda _: completion('{"name": "Ada Lovelace", "born": 1815}')
    person = make_llm(wrapper).with_structured_output(Person).invoke("Ada Lovelace, born 1815")
    assert person == Person(name="Ada Lovelace", born=1815)
    body = wrapper.calls[0][2]
    assert body["response_format"]["type"] == "json_schema"
    assert "ls_structured_output_format" not in body


# -- streaming ------------------------------------------------------------------------------------


class _Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        self.tokens.append(token)


def check_stream(chunks: list[AIMessageChunk]) -> None:
    assert [c.content for c in chunks] == ["Bon", "jour", ""]
    # Usage and the service's facts arrive once, on the last chunk.
    assert [c.usage_metadata is not None for c in chunks] == [False, False, True]
    assert chunks[-1].chunk_position == "last"
    merged = chunks[0] + chunks[1] + chunks[2]
    check_answer(merged, "Bonjour")


def test_stream(wrapper: FakeWrapper) -> None:
    tokens = _Tokens()
    chunks = list(make_llm(wrapper).stream("Hi", config={"callbacks": [tokens]}))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    check_stream(chunks)  # type: ignore[arg-type]
    assert tokens.tokens == ["Bon", "jour", ""]
    body = wrapper.calls[0][2]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_astream(wrapper: FakeWrapper) -> None:
    llm = make_llm(wrapper)
    chunks = [c async for c in llm.astream("Hi")]
    check_stream(chunks)  # type: ignore[arg-type]
    await llm.aclose()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_streaming_flag_makes_invoke_stream(wrapper: FakeWrapper, mode: str) -> None:
    llm = make_llm(wrapper, streaming=True)
    message = llm.invoke("Hi") if mode == "sync" else asyncio.run(llm.ainvoke("Hi"))
    check_answer(message, "Bonjour")
    assert wrapper.calls[0][2]["stream"] is True


def test_stream_error_mid_stream(wrapper: FakeWrapper) -> None:
    wrapper.stream_events = [
        ": keep-alive",
        chunk({"content": "Bon"}),
        {"error": {"message": "the engine process exited (code 1)", "type": "engine_unavailable",
                   "param": None, "code": 503}},
        "[DONE]",
    ]  # fmt: skip
    got: list[BaseMessage] = []
    with pytest.raises(ServiceUnavailableError, match="engine process exited"):
        for item in make_llm(wrapper).stream("Hi"):
            got.append(item)
    assert [c.content for c in got] == ["Bon"]  # what came before the error was handed out
    assert len(wrapper.calls) == 1  # and the request was not sent again


# -- batch ----------------------------------------------------------------------------------------


def test_batch_is_one_request(wrapper: FakeWrapper) -> None:
    llm = make_llm(wrapper, temperature=0)
    answers = llm.batch(["one", "two", "three"], config={"max_concurrency": 2})
    for answer, text in zip(answers, ["one", "two", "three"], strict=True):
        check_answer(answer, f"echo: {text}")
    # One batch request, and no per-input requests after it.
    assert wrapper.paths() == ["/v1/chat/completions/batch"]
    body = wrapper.calls[0][2]
    assert body["max_concurrency"] == 2
    assert [last_user_text(r) for r in body["requests"]] == ["one", "two", "three"]
    assert all(r["temperature"] == 0 for r in body["requests"])


async def test_abatch_is_one_request(wrapper: FakeWrapper) -> None:
    llm = make_llm(wrapper)
    answers = await llm.abatch(["a", "b"])
    assert [a.content for a in answers] == ["echo: a", "echo: b"]
    assert wrapper.paths() == ["/v1/chat/completions/batch"]
    assert wrapper.calls[0][2]["max_concurrency"] is None
    await llm.aclose()


def test_batch_of_identical_inputs(wrapper: FakeWrapper) -> None:
    counter = iter(range(10))
    wrapper.completion = lambda body: completion(f"answer {next(counter)}")
    answers = make_llm(wrapper).batch(["same", "same", "same"])
    # Each identical input gets its own answer: none is used twice, none is lost.
    assert sorted(str(a.content) for a in answers) == ["answer 0", "answer 1", "answer 2"]
    assert wrapper.paths() == ["/v1/chat/completions/batch"]


def test_batch_per_call_kwargs_reach_every_request(wrapper: FakeWrapper) -> None:
    make_llm(wrapper).batch(["a", "b"], stop=["END"], temperature=0.5)
    requests = wrapper.calls[0][2]["requests"]
    assert [(r["stop"], r["temperature"]) for r in requests] == [(["END"], 0.5)] * 2
    assert wrapper.paths() == ["/v1/chat/completions/batch"]


def test_batch_item_errors(wrapper: FakeWrapper) -> None:
    wrapper.batch_errors[1] = {
        "status_code": 400,
        "error": {"message": "maximum context length is 2048 tokens", "type": "x",
                  "param": "messages", "code": 400},
    }  # fmt: skip
    llm = make_llm(wrapper)
    answers = llm.batch(["ok", "too long", "fine"], return_exceptions=True)
    assert isinstance(answers[1], ContextLengthError)
    assert answers[1].status_code == 400 and answers[1].param == "messages"
    assert [answers[0].content, answers[2].content] == ["echo: ok", "echo: fine"]
    assert wrapper.paths() == ["/v1/chat/completions/batch"]

    with pytest.raises(ContextLengthError):
        llm.batch(["ok", "too long", "fine"])


def test_batch_request_failure_raises(wrapper: FakeWrapper) -> None:
    wrapper.queued["/v1/chat/completions/batch"] = [
        lambda _: httpx.Response(401, json={"error": {"message": "invalid API key"}})
    ]
    with pytest.raises(AuthenticationError):
        make_llm(wrapper).batch(["a", "b"])
    assert wrapper.paths() == ["/v1/chat/completions/batch"]


def test_batch_request_failure_with_return_exceptions_falls_back_per_input(
    wrapper: FakeWrapper,
) -> None:
    # What the code does today: a failed batch request leaves nothing prefetched, so each
    # input is sent on its own.
    wrapper.queued["/v1/chat/completions/batch"] = [
        lambda _: httpx.Response(404, json={"detail": "Not Found"})
    ]
    answers = make_llm(wrapper).batch(["a", "b"], return_exceptions=True)
    assert [a.content for a in answers] == ["echo: a", "echo: b"]  # type: ignore[union-attr]
    assert wrapper.paths()[0] == "/v1/chat/completions/batch"
    assert sorted(wrapper.paths()[1:]) == ["/v1/chat/completions"] * 2


@pytest.mark.parametrize(("inputs", "kwargs"), [(["only"], {}), (["a", "b"], {"streaming": True})])
def test_batch_without_the_batch_route(
    wrapper: FakeWrapper, inputs: list[str], kwargs: dict[str, Any]
) -> None:
    # One input, or a streaming model: ordinary per-input calls.
    answers = make_llm(wrapper, **kwargs).batch(inputs)  # type: ignore[arg-type]
    assert len(answers) == len(inputs)
    assert all(isinstance(a, AIMessage) and a.content for a in answers)
    assert "/v1/chat/completions/batch" not in wrapper.paths()
    assert len(wrapper.paths()) == len(inputs)


# -- service helpers ------------------------------------------------------------------------------


def test_warmup_and_status(wrapper: FakeWrapper) -> None:
    llm = make_llm(wrapper)
    assert llm.warmup() == {"state": "starting"}
    assert llm.service_status() == {"state": "cold", "queue": 0}
    assert [(m, p) for m, p, _ in wrapper.calls] == [("POST", "/warmup"), ("GET", "/status")]
    llm.close()


async def test_awarmup(wrapper: FakeWrapper) -> None:
    llm = make_llm(wrapper)
    assert await llm.awarmup() == {"state": "starting"}
    assert wrapper.paths() == ["/warmup"]
    await llm.aclose()
