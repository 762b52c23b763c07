"""``/v1/responses`` against real vLLM (CPU): the wrapper relays vLLM's own Responses API, for
the openai SDK and for ``ChatOpenAI(use_responses_api=True)``, under the slash-free alias."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

pytestmark = pytest.mark.timeout(300)
ALIAS = "smollm2-135m-instruct"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False},
    "strict": True,
}  # fmt: skip


def test_a_plain_response_under_the_alias(warm_stack, api_key) -> None:
    client = openai.OpenAI(base_url=f"{warm_stack.url}/v1", api_key=api_key)
    answer = client.responses.create(model=ALIAS, input="Say hello.", max_output_tokens=16,
                                     temperature=0)  # fmt: skip
    assert answer.output_text.strip()
    assert answer.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert answer.usage is not None and answer.usage.output_tokens > 0


def test_a_forced_tool_call_comes_back_as_a_function_call_item(warm_stack, api_key) -> None:
    client = openai.OpenAI(base_url=f"{warm_stack.url}/v1", api_key=api_key)
    answer = client.responses.create(
        model=ALIAS, input="What is the weather in Paris?", tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=64,
        temperature=0,
    )  # fmt: skip
    calls = [item for item in answer.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"]
    assert set(json.loads(calls[0].arguments)) == {"city"}


def test_a_streamed_response_gives_the_plain_answer_s_text(warm_stack, api_key) -> None:
    client = openai.OpenAI(base_url=f"{warm_stack.url}/v1", api_key=api_key, max_retries=0)
    ask = {"model": ALIAS, "input": "Say hello.", "max_output_tokens": 16, "temperature": 0}
    plain = client.responses.create(**ask).output_text
    kinds, text = [], ""
    for event in client.responses.create(**ask, stream=True):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    assert text == plain and text.strip()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"


def test_the_agents_sdk_s_default_responses_model_runs_an_agent_with_a_tool(
    warm_stack, api_key
) -> None:
    """The OpenAI Agents SDK's default model is the Responses API; the slash-free alias is
    the name it can take (a slash reads as a provider prefix there). The 135M model does not
    pick a tool by itself: the first turn forces it (the SDK resets the choice after)."""
    from agents import (
        Agent,
        ModelSettings,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    async def run() -> Any:
        # Closed on the loop it ran on: no socket is left for a later test to find.
        async with openai.AsyncOpenAI(base_url=f"{warm_stack.url}/v1", api_key=api_key) as client:
            agent = Agent(name="weather", instructions="Answer briefly.", tools=[get_weather],
                          model=OpenAIResponsesModel(model=ALIAS, openai_client=client),
                          model_settings=ModelSettings(tool_choice="get_weather",
                                                       temperature=0, max_tokens=64))  # fmt: skip
            return await Runner.run(agent, "What is the weather in Paris?", max_turns=3)

    result = asyncio.run(run())
    assert calls and result.final_output is not None
    kinds = [item.type for item in result.new_items]
    assert "tool_call_item" in kinds and "tool_call_output_item" in kinds


def test_chat_openai_on_the_responses_api_calls_a_tool(warm_stack, api_key) -> None:
    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    llm = ChatOpenAI(model=ALIAS, base_url=f"{warm_stack.url}/v1", api_key=api_key,
                     use_responses_api=True, temperature=0, max_tokens=64)  # fmt: skip
    message = llm.bind_tools([get_weather], tool_choice="get_weather", strict=True).invoke(
        "What is the weather in Paris?"
    )
    assert [c["name"] for c in message.tool_calls] == ["get_weather"]
    assert set(message.tool_calls[0]["args"]) == {"city"}


def test_structured_output_follows_the_schema(warm_stack, api_key) -> None:
    client = openai.OpenAI(base_url=f"{warm_stack.url}/v1", api_key=api_key)
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}  # fmt: skip
    answer = client.responses.create(
        model=ALIAS, input="Name the capital of France.", max_output_tokens=48, temperature=0,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema,
                         "strict": True}},
    )  # fmt: skip
    assert set(json.loads(answer.output_text)) == {"city"}
