"""The model's profile and token counts on the live stack, without the GPU.

A second wrapper runs over a ``LocalTransport`` that is never started (``serve_on_stack``):
its ``/v1/models`` and ``/tokenize`` must answer while its engine stays cold. Its counts are
held to what vLLM itself says of the same messages: ``usage.prompt_tokens`` of a chat
completion on the warm shared stack (and vLLM's own ``/tokenize``, for the diagnosis).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, Field, SecretStr

from deploy.ops.local_stack import LocalStack
from deploy.settings.settings import Settings
from deploy.transports.local import LocalTransport
from deploy.wrapper import create_app
from langchain_vllm_autoscale import ChatVLLMAutoscale
from tests.integration_tests.conftest import API_KEY, serve_on_stack

AUTH = {"authorization": f"Bearer {API_KEY}"}
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Search the docs; returns the top hits as JSON.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "filters": {
                    "type": "object",
                    "properties": {"lang": {"type": "string"}, "year": {"type": "integer"}},
                },
                "limit": {"type": "integer", "minimum": 1, "maximum": 20},
            },
            "required": ["query"],
        },
    },
}
NO_DESCRIPTION = {"type": "function", "function": {"name": "ping", "parameters": {}}}


def _call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


LONG = " ".join(
    f"Paragraph {i}: the quick brown fox jumps over the lazy dog while the wrapper counts."
    for i in range(40)
)
WEATHER_CALL = _call("call_1", "get_weather", {"city": "Paris"})
CASES: dict[str, dict[str, Any]] = {
    "user only": {"messages": [{"role": "user", "content": "Hi!"}]},
    "system and user": {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."}]},
    "multi-turn": {"messages": [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
        {"role": "user", "content": "Spain?"}]},
    "unicode": {"messages": [{"role": "user", "content":
        "Café, naïve, Straße; 日本語のテキスト; 한국어; مرحبا بالعالم; emoji 🦊🚀👩‍💻; "
        "combining e\u0301; zero\u200bwidth"}]},
    "long text": {"messages": [
        {"role": "system", "content": "Summarise."},
        {"role": "user", "content": LONG}]},
    "whitespace": {"messages": [
        {"role": "user", "content": "  leading\n\n\ttabs\r\n trailing  \n"}]},
    "content parts": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "First part."}, {"type": "text", "text": "Second part."}]}]},
    "special-token text": {"messages": [{"role": "user", "content":
        "Literal <|im_start|>user and <|im_end|> and <tool_call> in text."}]},
    "code and json": {"messages": [{"role": "user", "content":
        'def f(x):\n    return {"a": [1, 2, {"b": None}]}  # {{ not jinja }}'}]},
    "named messages": {"messages": [
        {"role": "user", "content": "Hello", "name": "alice"},
        {"role": "assistant", "content": "Hi Alice", "name": "bot"},
        {"role": "user", "content": "Bye", "name": "alice"}]},
    "empty assistant": {"messages": [
        {"role": "user", "content": "Say nothing."},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Now say hi."}]},
    "developer first": {"messages": [
        {"role": "developer", "content": "Be formal."},
        {"role": "user", "content": "Greet me."}]},
    "developer mid-conversation": {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "One?"},
        {"role": "developer", "content": "Now be verbose."},
        {"role": "user", "content": "Two?"}]},
    "one tool": {"messages": [{"role": "user", "content": "Weather in Paris?"}],
                 "tools": [WEATHER]},
    "two tools": {"messages": [
        {"role": "system", "content": "Use tools when useful."},
        {"role": "user", "content": "Find the 2024 docs about streaming."}],
        "tools": [WEATHER, SEARCH]},
    "tool without description": {"messages": [{"role": "user", "content": "Ping."}],
                                 "tools": [NO_DESCRIPTION]},
    "tools with tool_choice none": {"messages": [{"role": "user", "content": "Hi"}],
                                    "tools": [WEATHER], "tool_choice": "none"},
    "tool call and result": {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"}],
        "tools": [WEATHER]},
    "parallel calls and results": {"messages": [
        {"role": "system", "content": "You may call several tools at once."},
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": "Checking both.", "tool_calls": [
            WEATHER_CALL, _call("call_2", "get_weather", {"city": "東京", "unit": "celsius"})]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"temp": 21, "sky": "clear"}'},
        {"role": "assistant", "content": "Paris 18, Tokyo 21."},
        {"role": "user", "content": "Thanks!"}],
        "tools": [WEATHER, SEARCH]},
    "call with nested arguments": {"messages": [
        {"role": "user", "content": "Search."},
        {"role": "assistant", "content": None, "tool_calls": [_call(
            "call_9", "search_docs",
            {"query": "naïve \"quotes\"", "filters": {"lang": "en", "year": 2024}, "limit": 3})]},
        {"role": "tool", "tool_call_id": "call_9", "content": "[]"}],
        "tools": [SEARCH]},
    "call with malformed arguments": {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None,
         "tool_calls": [_call("call_3", "get_weather", "{not json")]},
        {"role": "tool", "tool_call_id": "call_3", "content": "unknown city"}],
        "tools": [WEATHER]},
    "assistant reasoning field": {"messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning": "Two plus two is four."},
        {"role": "user", "content": "Times 3?"}]},
    "long system with tools": {"messages": [
        {"role": "system", "content": LONG[:1500]},
        {"role": "user", "content": "Go."}],
        "tools": [WEATHER, SEARCH, NO_DESCRIPTION]},
}  # fmt: skip


@pytest.fixture(scope="module")
def cold(stack: LocalStack) -> Iterator[tuple[str, LocalTransport]]:
    """A wrapper over a fresh transport for the same engine config, never started."""
    transport = LocalTransport(stack.engine_config, scaledown_window=None)
    settings = Settings(wrapper_api_key=SecretStr(API_KEY))
    with serve_on_stack(stack, create_app(transport, settings)) as url:
        yield url, transport
    # Everything in this module ran against it: the engine never started.
    assert transport.state == "cold" and transport.cold_starts == 0
    assert not transport.engine.is_running()


@pytest.fixture(scope="module")
def cold_http(cold: tuple[str, LocalTransport]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cold[0], headers=AUTH, timeout=120) as client:
        yield client


def _assert_cold(cold_http: httpx.Client, transport: LocalTransport) -> None:
    status = cold_http.get("/status").json()
    assert status["state"] == "cold" and status["cold_starts"] == 0, status
    assert transport.engine.pid is None


def test_models_answers_while_the_engine_is_cold(
    cold: tuple[str, LocalTransport], cold_http: httpx.Client, stack: LocalStack, http
) -> None:
    before = stack.status()["cold_starts"]
    response = cold_http.get("/v1/models")
    assert response.status_code == 200
    (card,) = response.json()["data"]
    assert card.pop("state") == "cold"  # as last seen: listing never wakes the engine
    assert card["id"] == MODEL and card["max_model_len"] == 2048
    assert card["capabilities"] == {
        "task": "generation",
        "endpoints": ["/v1/chat/completions", "/v1/completions", "/v1/responses"],
        "tool_calling": True, "tool_parser": "hermes", "structured_output": True,
        "reasoning": False, "reasoning_parser": None, "image_inputs": False,
        "max_output_tokens": 2048, "token_counting": True,
    }  # fmt: skip
    _assert_cold(cold_http, cold[1])
    # The shared stack says the same, and listing models starts nothing there either.
    (shared,) = http.get("/v1/models").json()["data"]
    shared.pop("state")
    assert shared == card
    assert stack.status()["cold_starts"] == before


def test_wrapper_counts_equal_vllms_prompt_tokens(
    cold: tuple[str, LocalTransport], cold_http: httpx.Client, warm_stack: LocalStack, http
) -> None:
    engine_url = warm_stack.transport.engine.base_url  # vLLM itself, for the diagnosis
    rows: list[tuple[str, int, int, int]] = []
    for name, case in CASES.items():
        counted = cold_http.post("/tokenize", json={
            "model": MODEL, "messages": case["messages"],
            **({"tools": case["tools"]} if "tools" in case else {}),
        })  # fmt: skip
        assert counted.status_code == 200, (name, counted.text)
        own = httpx.post(
            f"{engine_url}/tokenize",
            json={"model": MODEL, "messages": case["messages"],
                  **({"tools": case["tools"]} if "tools" in case else {})},
            timeout=60,
        )  # fmt: skip
        assert own.status_code == 200, (name, own.text)
        served = http.post("/v1/chat/completions", json={**case, "max_tokens": 1, "temperature": 0})
        assert served.status_code == 200, (name, served.text)
        rows.append(
            (name, counted.json()["count"], own.json()["count"],
             served.json()["usage"]["prompt_tokens"])
        )  # fmt: skip
    matched = sum(1 for _, ours, _, usage in rows if ours == usage)
    print(f"\nwrapper /tokenize == vLLM usage.prompt_tokens: {matched}/{len(rows)}")
    for name, ours, own, usage in rows:
        print(f"  {name:32} wrapper {ours:5}  vLLM /tokenize {own:5}  usage {usage:5}")
    assert len(rows) >= 20
    assert [(n, o) for n, o, _, u in rows if o != u] == []
    _assert_cold(cold_http, cold[1])


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="The city")


LC_MESSAGES = [
    SystemMessage("You are a weather bot."),
    HumanMessage("Weather in Paris? Réponds en français 🌦"),
    AIMessage("", tool_calls=[{"id": "call_7", "name": "GetWeather", "args": {"city": "Paris"}}]),
    ToolMessage("12 °C, pluie", tool_call_id="call_7"),
]


def test_client_profile_and_counts_come_from_the_cold_wrapper(
    cold: tuple[str, LocalTransport], cold_http: httpx.Client, warm_stack: LocalStack
) -> None:
    from langchain.agents.factory import _supports_provider_strategy

    counter = ChatVLLMAutoscale(base_url=cold[0], api_key=API_KEY)
    profile = counter.profile
    assert profile is not None
    assert profile["max_input_tokens"] == 2048 and profile["structured_output"] is True
    assert profile["tool_calling"] is True and profile["reasoning_output"] is False
    assert profile["image_inputs"] is False
    assert _supports_provider_strategy(counter)  # create_agent: json_schema, not a tool

    served = ChatVLLMAutoscale(base_url=warm_stack.url, api_key=API_KEY, max_tokens=1)
    usage = served.bind_tools([GetWeather]).invoke(LC_MESSAGES).usage_metadata
    assert usage is not None
    assert (
        counter.get_num_tokens_from_messages(LC_MESSAGES, tools=[GetWeather])
        == (usage["input_tokens"])
    )
    no_tools = served.invoke(LC_MESSAGES[:2]).usage_metadata
    assert no_tools is not None
    assert counter.get_num_tokens_from_messages(LC_MESSAGES[:2]) == no_tools["input_tokens"]

    text = "Counting tokens without a GPU: 數字, emoji 🦊, and <|im_end|>."
    own = httpx.post(
        f"{warm_stack.transport.engine.base_url}/tokenize",
        json={"model": MODEL, "prompt": text, "add_special_tokens": False},
    ).json()
    assert counter.get_num_tokens(text) == own["count"]
    assert counter.get_token_ids(text) == own["tokens"]
    _assert_cold(cold_http, cold[1])


class Sum(BaseModel):
    """The answer to an addition."""

    result: int


class Recording(httpx.HTTPTransport):
    """Records the JSON bodies of the chat completions it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict[str, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/chat/completions"):
            self.bodies.append(json.loads(request.read()))
        return super().handle_request(request)


def test_create_agent_answers_with_json_schema_on_the_live_stack(warm_stack: LocalStack) -> None:
    from langchain.agents import create_agent

    recording = Recording()
    llm = ChatVLLMAutoscale(
        base_url=warm_stack.url, api_key=API_KEY, temperature=0, max_tokens=32,
        http_transport=recording,
    )  # fmt: skip
    agent = create_agent(llm, tools=[], response_format=Sum)
    result = agent.invoke({"messages": [HumanMessage("What is 2 + 3? Give the result.")]})
    assert isinstance(result["structured_response"], Sum)
    (body,) = recording.bodies
    assert body["response_format"]["type"] == "json_schema"  # the ProviderStrategy
    assert "tools" not in body  # and no forced tool call (nor vLLM's 400 for tools: [])
