"""A wait is never silent: the wrapper's progress comments while the GPU wakes, and every
retry the client makes, reach the caller as LangChain custom events (``astream_events``,
callback handlers), LangGraph's custom stream, and log lines; the answer's text is
untouched by them."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace
from typing import Any, TypedDict

import httpx
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langgraph.graph import START, StateGraph

from langchain_vllm_autoscale import ChatVLLMAutoscale, _http
from langchain_vllm_autoscale._http import ServiceClient

PROGRESS = [
    {"object": "vllm_autoscale.progress", "model": "m", "state": "starting", "elapsed_s": 3.0,
     "eta_s": 30.0, "queue_depth": 1, "waited_s": 0.5},
    {"object": "vllm_autoscale.progress", "model": "m", "state": "starting", "elapsed_s": 5.0,
     "eta_s": 28.0, "queue_depth": 1, "waited_s": 2.5},
]  # fmt: skip


def _chunk(text: str) -> str:
    delta = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    body = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [delta]}
    return "data: " + json.dumps(body) + "\n\n"


COLD_STREAM = (
    "".join(": vllm-autoscale-progress " + json.dumps(p) + "\n\n" for p in PROGRESS)
    + ": keep-alive\n\n"
    + _chunk("Hel")
    + _chunk("lo")
    + "data: [DONE]\n\n"
)
ANSWER = {"id": "c", "object": "chat.completion", "model": "m",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                       "finish_reason": "stop"}]}  # fmt: skip


def _model(*responses: httpx.Response) -> ChatVLLMAutoscale:
    steps = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        return steps.pop(0)

    llm = ChatVLLMAutoscale(base_url="http://wrapper.test", api_key="sk-test", warmup=False,
                            max_retries=2)  # fmt: skip
    transport = httpx.MockTransport(handler)
    llm._client = ServiceClient("http://wrapper.test", api_key="sk-test", timeout=5,
                                connect_timeout=1, max_retries=2, transport=transport,
                                async_transport=transport)  # fmt: skip
    return llm


def _cold() -> httpx.Response:
    return httpx.Response(200, content=COLD_STREAM.encode(),
                          headers={"content-type": "text/event-stream"})  # fmt: skip


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    delays: list[float] = []

    class RecordedAsyncio:
        async def sleep(self, delay: float) -> None:
            delays.append(delay)

        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

    monkeypatch.setattr(_http, "time", SimpleNamespace(sleep=delays.append))
    monkeypatch.setattr(_http, "asyncio", RecordedAsyncio())
    return delays


async def test_a_cold_stream_s_progress_is_a_custom_event_and_never_text(caplog) -> None:
    """In a chain (or an agent, a graph), ``astream_events`` shows the progress."""
    chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | _model(_cold())
    caplog.set_level(logging.INFO, logger="langchain_vllm_autoscale")
    custom, text = [], ""
    async for event in chain.astream_events({"q": "hi"}, version="v2"):
        if event["event"] == "on_custom_event":
            custom.append(event)
        elif event["event"] == "on_chat_model_stream":
            text += event["data"]["chunk"].content
    assert text == "Hello"  # the progress never reaches the answer
    assert [e["name"] for e in custom] == ["vllm_autoscale.progress"] * 2
    assert [e["data"]["elapsed_s"] for e in custom] == [3.0, 5.0]
    assert custom[0]["data"]["eta_s"] == 30.0
    lines = [r for r in caplog.records if r.name == "langchain_vllm_autoscale"]
    assert [r.levelno for r in lines] == [logging.INFO] * 2
    assert "GPU waking (starting), 3 s of about 33 s" in lines[0].getMessage()


@pytest.mark.parametrize("how", ["chain", "model_callbacks"])
def test_a_callback_handler_sees_progress(how: str) -> None:
    """A handler's ``on_custom_event`` hook: the calling run's handlers (a chain, an agent),
    or, for a model streamed at the top level, the model's own ``callbacks``."""
    seen: list[tuple[str, Any]] = []

    class Handler(BaseCallbackHandler):
        def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            seen.append((name, data))

    llm = _model(_cold())
    if how == "chain":
        chain = RunnableLambda(lambda x: x) | llm
        text = "".join(c.content for c in chain.stream("hi", config={"callbacks": [Handler()]}))
    else:
        llm.callbacks = [Handler()]
        text = "".join(c.content for c in llm.stream("hi"))
    assert text == "Hello"
    assert [name for name, _ in seen] == ["vllm_autoscale.progress"] * 2


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_retry_is_a_warning_and_an_event_naming_the_reason_and_wait(
    mode: str, no_sleep: list[float], caplog
) -> None:
    limited = httpx.Response(
        429, headers={"retry-after": "7"},
        json={"error": {"message": "rpm", "type": "rpm", "param": None, "code": 429}},
    )  # fmt: skip
    llm = _model(limited, httpx.Response(200, json=ANSWER))
    seen: list[tuple[str, Any]] = []

    class Handler(BaseCallbackHandler):
        def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            seen.append((name, data))

    caplog.set_level(logging.INFO, logger="langchain_vllm_autoscale")
    config = {"callbacks": [Handler()]}
    if mode == "sync":
        answer = llm.invoke("hi", config=config)
    else:
        answer = asyncio.run(llm.ainvoke("hi", config=config))
    assert answer.content == "hi" and no_sleep == [7.0]
    (name, data), = seen  # fmt: skip
    assert name == "vllm_autoscale.retry"
    assert data["reason"] == "HTTP 429 rpm" and data["wait_s"] == 7.0 and data["attempt"] == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "retrying in 7.0 s (HTTP 429 rpm" in warnings[0].getMessage()


def test_a_retry_without_a_listener_is_still_logged(no_sleep: list[float], caplog) -> None:
    unavailable = httpx.MockTransport(lambda r: httpx.Response(503, headers={"retry-after": "2"}))
    client = ServiceClient("http://wrapper.test", api_key=None, timeout=5, connect_timeout=1,
                           max_retries=1, transport=unavailable)  # fmt: skip
    caplog.set_level(logging.WARNING, logger="langchain_vllm_autoscale")
    with pytest.raises(Exception, match="503"):
        client.request("POST", "/v1/x", {})
    assert any("retrying in 2.0 s: HTTP 503" in r.getMessage() for r in caplog.records)


class State(TypedDict):
    text: str


def test_langgraph_s_custom_stream_carries_the_progress() -> None:
    llm = _model(_cold())

    def node(state: State) -> State:
        return {"text": "".join(c.content for c in llm.stream(state["text"]))}

    graph = StateGraph(State).add_node("model", node).add_edge(START, "model").compile()
    parts = list(graph.stream({"text": "hi"}, stream_mode=["custom", "updates"]))
    custom = [data for mode, data in parts if mode == "custom"]
    updates = [data for mode, data in parts if mode == "updates"]
    assert [c["type"] for c in custom] == ["vllm_autoscale.progress"] * 2
    assert custom[0]["message"].startswith("m: GPU waking (starting)")
    assert updates == [{"model": {"text": "Hello"}}]
