"""LangChain 1.x ``create_agent`` on ChatVLLMAutoscale against the live stack: a tool call,
its result, and a ``structured_response`` in the ``response_format`` schema, in both output
versions and with both of langchain's structured-output strategies.

SmolLM2-135M never chooses a tool on its own, so a middleware forces the tool on the first
model call (the pattern ``examples/agents_v1.py`` shows).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain.agents.structured_output import ProviderStrategy, ToolStrategy
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from langchain_vllm_autoscale import ChatVLLMAutoscale

CITIES: list[str] = []


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    CITIES.append(city)
    return "sunny, 24 C"


class WeatherReport(BaseModel):
    """The agent's final answer."""

    city: str = Field(description="The city the report is about")
    temperature_c: int = Field(description="The temperature in degrees Celsius")
    # Closed choices and numbers rather than free text: a 135M model keeps writing a free-text
    # field until max_tokens runs out.
    sky: Literal["sunny", "cloudy", "rain", "snow", "clear"]


class ForceToolFirst(AgentMiddleware):
    """First model call: call ``get_weather`` (no structured output yet, or the provider
    strategy would skip the tool); once it answered: no tools, only the final answer."""

    def _adjust(self, request: ModelRequest) -> ModelRequest:
        if any(isinstance(m, ToolMessage) for m in request.messages):
            return request.override(tools=[])
        return request.override(tool_choice="get_weather", response_format=None)

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        return handler(self._adjust(request))

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        return await handler(self._adjust(request))


def _llm(stack_url: str, api_key: str, **kwargs: Any) -> ChatVLLMAutoscale:
    return ChatVLLMAutoscale(
        base_url=stack_url, api_key=api_key, temperature=0, max_tokens=96, **kwargs
    )


def _agent(llm: ChatVLLMAutoscale, response_format: Any) -> Any:
    return create_agent(
        llm,
        tools=[get_weather],
        system_prompt="Use the tools' results to answer.",
        response_format=response_format,
        middleware=[ForceToolFirst()],
    )


QUESTION = {"messages": [HumanMessage("What is the weather in Paris right now?")]}


def _strategy_used(result: dict[str, Any]) -> str:
    """Which strategy produced the answer, from what it leaves in the history: the tool
    strategy's forced ``WeatherReport`` call and its ToolMessage, or the provider strategy's
    constrained JSON text."""
    messages = result["messages"]
    schema_calls = [
        c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls
        if c["name"] == "WeatherReport"
    ]  # fmt: skip
    if schema_calls:
        assert any(isinstance(m, ToolMessage) and m.name == "WeatherReport" for m in messages)
        return "tool"
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls
    assert json.loads(final.text) == result["structured_response"].model_dump()
    return "provider"


def _check_run(result: dict[str, Any]) -> None:
    report = result["structured_response"]
    assert isinstance(report, WeatherReport)
    assert report.city.strip()
    assert CITIES, "the tool was never called"
    tool_results = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert tool_results[0].name == "get_weather" and tool_results[0].text == "sunny, 24 C"


@pytest.mark.parametrize("version", ["v0", "v1"])
@pytest.mark.parametrize(
    ("strategy", "response_format"),
    [("tool", ToolStrategy(WeatherReport)), ("provider", ProviderStrategy(WeatherReport))],
)
def test_structured_response(warm_stack, api_key, version, strategy, response_format) -> None:
    CITIES.clear()
    llm = _llm(warm_stack.url, api_key, output_version=version)
    result = _agent(llm, response_format).invoke(QUESTION)
    _check_run(result)
    assert _strategy_used(result) == strategy
    if version == "v1":
        first_ai = next(m for m in result["messages"] if isinstance(m, AIMessage))
        assert [b["type"] for b in first_ai.content] == ["tool_call"]  # type: ignore[index]


@pytest.mark.parametrize(("structured_output", "strategy"), [(True, "provider"), (False, "tool")])
def test_plain_schema_follows_the_profile(
    warm_stack, api_key, structured_output: bool, strategy: str
) -> None:
    """``response_format=Schema`` (langchain's AutoStrategy): the model's profile decides."""
    CITIES.clear()
    llm = _llm(warm_stack.url, api_key, profile={"structured_output": structured_output})
    result = _agent(llm, WeatherReport).invoke(QUESTION)
    _check_run(result)
    assert _strategy_used(result) == strategy


def test_service_profile_picks_the_provider_strategy(warm_stack, api_key) -> None:
    """With no profile given, the service's own decides; where it says the engine does
    structured output (vLLM's json_schema), create_agent uses constrained decoding."""
    llm = _llm(warm_stack.url, api_key)
    if not (llm.profile or {}).get("structured_output"):
        pytest.skip(
            "this client reads no profile from the service (or it has no structured_output)"
        )
    CITIES.clear()
    result = _agent(llm, WeatherReport).invoke(QUESTION)
    _check_run(result)
    assert _strategy_used(result) == "provider"


async def test_async_stream_updates_v1(warm_stack, api_key) -> None:
    CITIES.clear()
    llm = _llm(warm_stack.url, api_key, output_version="v1")
    nodes: list[str] = []
    report = None
    async for update in _agent(llm, WeatherReport).astream(QUESTION, stream_mode="updates"):
        for node, state in update.items():
            nodes.append(node)
            if state and state.get("structured_response") is not None:
                report = state["structured_response"]
    assert isinstance(report, WeatherReport)
    assert nodes[:3] == ["model", "tools", "model"]
    assert CITIES
