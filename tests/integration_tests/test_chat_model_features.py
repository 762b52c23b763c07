"""ChatVLLMAutoscale against the live stack: streaming, one-request batch, tools, structured
output, errors and retries, beyond what LangChain's standard suite covers."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deploy.engine.process import free_port
from langchain_vllm_autoscale import (
    APIConnectionError,
    BadRequestError,
    ChatVLLMAutoscale,
    ContextLengthError,
)


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="The city")


class TokenCounter(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


@pytest.fixture
def llm(warm_stack, api_key) -> ChatVLLMAutoscale:
    return ChatVLLMAutoscale(base_url=warm_stack.url, api_key=api_key, temperature=0, max_tokens=24)


def _route_count(http: httpx.Client, route: str) -> float:
    text = http.get("/metrics").text
    pattern = (
        rf'vllm_autoscale_requests_total{{route="{re.escape(route)}",status="200"}} ([0-9.e+]+)'
    )
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def _check_stream(chunks: list[AIMessageChunk], counter: TokenCounter) -> None:
    assert len(chunks) > 2
    with_usage = [c for c in chunks if c.usage_metadata]
    with_finish = [c for c in chunks if c.response_metadata.get("finish_reason")]
    with_model = [c for c in chunks if c.response_metadata.get("model_name")]
    assert len(with_usage) == len(with_finish) == len(with_model) == 1
    assert with_usage[0] is chunks[-1] and chunks[-1].chunk_position == "last"
    assert with_usage[0].usage_metadata["output_tokens"] > 0
    full = sum(chunks[1:], chunks[0])
    assert full.text.strip()
    assert full.response_metadata["finish_reason"] in {"stop", "length"}
    assert "".join(counter.tokens) == full.text


def test_stream_yields_tokens_and_one_final_chunk(llm) -> None:
    counter = TokenCounter()
    chunks = list(llm.stream("Count from one to ten.", config={"callbacks": [counter]}))
    _check_stream(chunks, counter)


async def test_astream_yields_tokens_and_one_final_chunk(llm) -> None:
    counter = TokenCounter()
    chunks = [
        c async for c in llm.astream("Count from one to ten.", config={"callbacks": [counter]})
    ]
    _check_stream(chunks, counter)


def _prompts(n: int) -> list[str]:
    # Prompts of growing length: their input token counts show the order of the results.
    return [f"Say ok. {'apple ' * i}" for i in range(n)]


def test_batch_of_16_is_one_request_in_order(llm, http) -> None:
    batch_before = _route_count(http, "/v1/chat/completions/batch")
    single_before = _route_count(http, "/v1/chat/completions")
    results = llm.batch(_prompts(16), config={"max_concurrency": 8})
    assert _route_count(http, "/v1/chat/completions/batch") == batch_before + 1
    assert _route_count(http, "/v1/chat/completions") == single_before
    inputs = [r.usage_metadata["input_tokens"] for r in results]
    assert len(results) == 16 and inputs == sorted(inputs) and len(set(inputs)) == 16
    assert all(r.text.strip() for r in results)


async def test_abatch_is_one_request_in_order(llm, http) -> None:
    before = _route_count(http, "/v1/chat/completions/batch")
    results = await llm.abatch(_prompts(6))
    assert _route_count(http, "/v1/chat/completions/batch") == before + 1
    inputs = [r.usage_metadata["input_tokens"] for r in results]
    assert inputs == sorted(inputs) and len(set(inputs)) == 6


def test_batch_return_exceptions_keeps_other_results(llm) -> None:
    too_long = "word " * 5000  # past the engine's 2048-token context
    results = llm.batch(["Say hi.", too_long, "Say bye."], return_exceptions=True)
    assert isinstance(results[1], ContextLengthError)
    assert "context" in str(results[1]).lower() or "token" in str(results[1]).lower()
    assert results[0].text and results[2].text
    with pytest.raises(BadRequestError):
        llm.batch(["Say hi.", too_long])


def test_forced_tool_call_and_tool_message_round_trip(llm) -> None:
    bound = llm.bind_tools([GetWeather], tool_choice="GetWeather")
    question = HumanMessage("What is the weather in Paris?")
    ai = bound.invoke([question], max_tokens=60)
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "GetWeather"
    assert isinstance(ai.tool_calls[0]["args"]["city"], str)
    assert ai.tool_calls[0]["id"]
    result = ToolMessage("Sunny, 24 C", tool_call_id=ai.tool_calls[0]["id"])
    answer = llm.bind_tools([GetWeather]).invoke([question, ai, result], max_tokens=40)
    assert answer.text.strip() and not answer.tool_calls


def test_unicode_tool_arguments(llm) -> None:
    class CreateCustomer(BaseModel):
        """Create a customer."""

        customer_name: str

    bound = llm.bind_tools([CreateCustomer], tool_choice="required")
    ai = bound.invoke("Create a customer named '你好啊集团'.", max_tokens=60)
    assert "你好" in ai.tool_calls[0]["args"]["customer_name"]


def test_streamed_tool_call_chunks_have_integer_indexes(llm) -> None:
    bound = llm.bind_tools([GetWeather], tool_choice="required")
    chunks = list(bound.stream("Weather in Rome?", max_tokens=60))
    tool_chunks = [tc for c in chunks for tc in c.tool_call_chunks]
    assert tool_chunks and all(isinstance(tc["index"], int) for tc in tool_chunks)
    full = sum(chunks[1:], chunks[0])
    assert full.tool_calls[0]["name"] == "GetWeather"
    assert isinstance(full.tool_calls[0]["args"].get("city"), str)
    assert full.response_metadata["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_with_raw(llm, method) -> None:
    structured = llm.with_structured_output(GetWeather, method=method, include_raw=True)
    out = structured.invoke("The weather in Oslo, please.", max_tokens=60)
    assert isinstance(out["parsed"], GetWeather) and out["parsing_error"] is None
    assert out["raw"].usage_metadata["output_tokens"] > 0


def test_per_call_params_reach_vllm(llm) -> None:
    first = llm.invoke("Write a word.", seed=3, temperature=1.0, max_tokens=6)
    again = llm.invoke("Write a word.", seed=3, temperature=1.0, max_tokens=6)
    assert first.text == again.text  # same seed, same sample
    stopped = llm.invoke("Count: 1, 2, 3, 4, 5, 6", stop=[","], max_tokens=20)
    assert "," not in stopped.text
    logp = llm.invoke("Hi", logprobs=True, top_logprobs=2, max_tokens=3)
    assert logp.response_metadata["logprobs"]["content"]
    assert llm.invoke("Hi", max_tokens=1).usage_metadata["output_tokens"] == 1


def test_invalid_parameter_names_the_field(llm) -> None:
    with pytest.raises(BadRequestError) as info:
        llm.invoke("hi", temperature=5)
    assert info.value.status_code == 422 and info.value.param == "temperature"


def test_unreachable_url_fails_fast() -> None:
    llm = ChatVLLMAutoscale(base_url=f"http://127.0.0.1:{free_port()}", max_retries=1)
    with pytest.raises(APIConnectionError, match="cannot reach"):
        llm.invoke("hi")


@pytest.fixture
def flaky_proxy(warm_stack) -> Iterator[dict[str, Any]]:
    """A real HTTP proxy in front of the stack that answers its first requests with 503 and
    Retry-After (as a wrapper does while the GPU wakes), then forwards to the real wrapper."""
    state: dict[str, Any] = {"failures_left": 2, "seen": 0}

    async def forward(request: Request) -> Response:
        state["seen"] += 1
        if state["failures_left"] > 0:
            state["failures_left"] -= 1
            return JSONResponse({"error": {"message": "warming up"}}, 503, {"Retry-After": "0.2"})
        async with httpx.AsyncClient(base_url=warm_stack.url, timeout=60) as client:
            upstream = await client.request(
                request.method, request.url.path, content=await request.body(),
                headers={
                    "authorization": request.headers.get("authorization", ""),
                    "content-type": "application/json",
                },
            )  # fmt: skip
        return Response(upstream.content, upstream.status_code, media_type="application/json")

    port = free_port()
    app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.02)
    state["url"] = f"http://127.0.0.1:{port}"
    yield state
    server.should_exit = True
    thread.join(10)


def test_retries_503_with_retry_after(flaky_proxy, api_key) -> None:
    llm = ChatVLLMAutoscale(base_url=flaky_proxy["url"], api_key=api_key, max_tokens=4)
    assert llm.invoke("hi").usage_metadata["output_tokens"] > 0
    assert flaky_proxy["seen"] == 3


def test_gives_up_after_max_retries(flaky_proxy, api_key) -> None:
    from langchain_vllm_autoscale import ServiceUnavailableError

    llm = ChatVLLMAutoscale(base_url=flaky_proxy["url"], api_key=api_key, max_retries=1)
    with pytest.raises(ServiceUnavailableError, match="warming up") as info:
        llm.invoke("hi")
    assert info.value.is_retryable and flaky_proxy["seen"] == 2
