"""A LangChain 1.x agent on ChatVLLMAutoscale: `create_agent` with tools, a pydantic answer
(`response_format`), progress streamed with `stream_mode="updates"`, and standard content
blocks (`output_version="v1"`).

    pip install 'langchain>=1.0'
    vllm-autoscale serve --local -- python examples/agents_v1.py

The local model (SmolLM2-135M) is tiny and never picks a tool by itself, so a middleware
forces a tool call on the agent's first model call and leaves later calls to answer. A model
that chooses tools itself (Llama-3.1-8B on Modal) needs no such help: set
AGENT_FORCE_TOOLS=0 to run without it.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AnyMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from langchain_vllm_autoscale import ChatVLLMAutoscale


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    forecasts = {"paris": "sunny, 24 C", "london": "light rain, 16 C", "tokyo": "cloudy, 21 C"}
    return forecasts.get(city.strip().lower(), "clear skies, 20 C")


class WeatherReport(BaseModel):
    """The agent's final answer."""

    city: str = Field(description="The city the report is about")
    temperature_c: int = Field(description="The temperature in degrees Celsius")
    # Closed choices and numbers rather than free text: a 135M model keeps writing a free-text
    # field until max_tokens runs out.
    sky: Literal["sunny", "cloudy", "rain", "snow", "clear"]


def _tool_results_in(messages: list[AnyMessage]) -> bool:
    """Whether a tool answered since the user's last message (this run's tool phase is over)."""
    for message in reversed(messages):
        if isinstance(message, ToolMessage):
            return True
        if isinstance(message, HumanMessage):
            return False
    return False


class ForceFirstToolCall(AgentMiddleware):
    """Make a small model use the tools: its first model call of a run must call `tool_name`;
    once a tool has answered, the model only answers (tools unbound), in the agent's
    `response_format`.

    The first call goes without the `response_format`: with it, langchain's provider strategy
    (vLLM's constrained decoding, picked when the model's profile allows) binds the tools
    without the tool choice, and its tool strategy replaces the choice with "any".
    """

    def __init__(self, tool_name: str) -> None:
        super().__init__()
        self.tool_name = tool_name

    def _adjust(self, request: ModelRequest) -> ModelRequest:
        if _tool_results_in(request.messages):
            return request.override(tools=[])
        return request.override(tool_choice=self.tool_name, response_format=None)

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        return handler(self._adjust(request))

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse:
        return await handler(self._adjust(request))


def build_agent(model: ChatVLLMAutoscale, *, force_tools: bool = True) -> Any:
    """The weather agent: one tool, a `WeatherReport` answer."""
    return create_agent(
        model,
        tools=[get_weather],
        system_prompt="Use the tools' results to answer.",
        response_format=WeatherReport,
        middleware=[ForceFirstToolCall("get_weather")] if force_tools else [],
    )


def _show(message: AnyMessage) -> None:
    blocks = [b.get("type") for b in message.content if isinstance(b, dict)]  # type: ignore[union-attr]
    if message.type == "ai" and message.tool_calls:
        for call in message.tool_calls:
            print(f"agent calls {call['name']}({call['args']})  [v1 blocks: {blocks}]")
    elif message.type == "tool":
        print(f"tool {message.name} -> {message.text}")
    else:
        print(f"{message.type}: {' '.join(message.text.split())}  [v1 blocks: {blocks}]")


if __name__ == "__main__":
    llm = ChatVLLMAutoscale(temperature=0, max_tokens=128, output_version="v1")
    agent = build_agent(llm, force_tools=os.environ.get("AGENT_FORCE_TOOLS", "1") != "0")
    question = "What is the weather in Paris right now?"
    print(f"user: {question}")
    report = None
    for update in agent.stream({"messages": [HumanMessage(question)]}, stream_mode="updates"):
        for node, state in update.items():
            if not state:
                continue
            print(f"[{node}]")
            for message in state.get("messages", []):
                _show(message)
            if state.get("structured_response") is not None:
                report = state["structured_response"]
    print(f"structured_response: {report!r}")
    assert isinstance(report, WeatherReport), report
