"""The multi-turn tool loop of an agent, against the live stack, in both output versions.

The model's tool-calling answer goes back to vLLM with the tool's result, as an agent sends
it. With ``output_version="v1"`` that answer's ``content`` is a list of standard blocks
(``text``, ``tool_call``, ...), which vLLM refuses as content parts (400 "Unsupported chat
content part type: 'tool_call'") unless the client turns them into OpenAI's shape.

SmolLM2-135M never chooses a tool under ``tool_choice="auto"``, so the first turn forces the
call; the library path (what goes back to vLLM, and how the answer comes out) is the same as
with a model that chooses tools itself.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.tools import tool

from langchain_vllm_autoscale import ChatVLLMAutoscale

CALLS: list[dict[str, Any]] = []


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    CALLS.append({"a": a, "b": b})
    return a * b


def _ask(model: Any, mode: str, messages: list[BaseMessage]) -> AIMessage:
    if mode == "invoke":
        return model.invoke(messages)
    chunks = list(model.stream(messages))
    merged = chunks[0]
    for piece in chunks[1:]:
        merged = merged + piece
    assert isinstance(merged, AIMessageChunk) and merged.chunk_position == "last"
    return merged


def _block_types(message: AIMessage) -> list[str]:
    assert isinstance(message.content, list), message.content
    return [block["type"] for block in message.content]  # type: ignore[index]


@pytest.mark.parametrize("mode", ["invoke", "stream"])
@pytest.mark.parametrize("version", ["v0", "v1"])
def test_tool_loop(warm_stack, api_key, version: str, mode: str) -> None:
    CALLS.clear()
    llm = ChatVLLMAutoscale(
        base_url=warm_stack.url, api_key=api_key, temperature=0, max_tokens=48,
        output_version=version,
    )  # fmt: skip
    question = HumanMessage("What is 6 times 7? Use the tool.")

    call_turn = _ask(llm.bind_tools([multiply], tool_choice="multiply"), mode, [question])
    (call,) = call_turn.tool_calls
    assert call["name"] == "multiply" and call["id"]
    if version == "v1":
        # The call is a standard block in content, which is what used to reach vLLM.
        assert "tool_call" in _block_types(call_turn)
    else:
        assert isinstance(call_turn.content, str)

    result = multiply.invoke(call)  # a ToolMessage answering the call's id
    assert CALLS and result.tool_call_id == call["id"]
    assert result.content == str(CALLS[0]["a"] * CALLS[0]["b"])

    # The same tools stay bound, as in an agent; the history carries the model's own message.
    final = _ask(llm.bind_tools([multiply]), mode, [question, call_turn, result])
    assert not final.tool_calls and final.text.strip()
    assert final.usage_metadata and final.usage_metadata["output_tokens"] > 0
    if version == "v1":
        assert set(_block_types(final)) == {"text"}
        assert final.response_metadata["output_version"] == "v1"


async def test_tool_loop_v1_async(warm_stack, api_key) -> None:
    llm = ChatVLLMAutoscale(
        base_url=warm_stack.url, api_key=api_key, temperature=0, max_tokens=48,
        output_version="v1",
    )  # fmt: skip
    question = HumanMessage("What is 6 times 7? Use the tool.")
    call_turn = await llm.bind_tools([multiply], tool_choice="required").ainvoke([question])
    result = await multiply.ainvoke(call_turn.tool_calls[0])
    chunks = [c async for c in llm.bind_tools([multiply]).astream([question, call_turn, result])]
    final = chunks[0]
    for piece in chunks[1:]:
        final = final + piece
    assert not final.tool_calls and final.text.strip()


def test_v1_history_with_reasoning_is_accepted(warm_stack, api_key) -> None:
    """A reasoning model's v1 turn carries a reasoning block; it goes back as the
    assistant's ``reasoning`` field, which vLLM reads (and this model's template ignores)."""
    llm = ChatVLLMAutoscale(
        base_url=warm_stack.url, api_key=api_key, temperature=0, max_tokens=24,
        output_version="v1",
    )  # fmt: skip
    thought = AIMessage(
        [
            {"type": "reasoning", "reasoning": "The user greets me; greet back."},
            {"type": "text", "text": "Hello! How can I help?"},
        ],
        response_metadata={"output_version": "v1"},
    )
    answer = llm.invoke([HumanMessage("Hi."), thought, HumanMessage("Say bye.")])
    assert answer.text.strip()
