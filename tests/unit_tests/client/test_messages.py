"""The pure conversions in ``_messages``: LangChain <-> OpenAI wire format, stream chunks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGenerationChunk

from langchain_vllm_autoscale import _messages
from langchain_vllm_autoscale._messages import (
    PROVIDER,
    StreamState,
    chat_result_from_response,
    dumps_body,
    to_openai_messages,
    usage_from_openai,
)

# -- LangChain messages -> OpenAI messages --------------------------------------------------------


def test_roles_and_plain_text() -> None:
    out = to_openai_messages(
        [
            SystemMessage("Be brief."),
            HumanMessage("Hi", name="ada"),
            AIMessage("Hello."),
            ChatMessage(content="Use French.", role="developer"),
        ]
    )
    assert out == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi", "name": "ada"},
        {"role": "assistant", "content": "Hello."},
        {"role": "developer", "content": "Use French."},
    ]


def test_empty_history() -> None:
    assert to_openai_messages([]) == []


def test_assistant_tool_calls_and_tool_results() -> None:
    ai = AIMessage(
        "",
        tool_calls=[
            {"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"},
            {"name": "get_time", "args": {}, "id": "c2"},
        ],
    )
    out = to_openai_messages([ai, ToolMessage("sunny", tool_call_id="c1")])
    assistant, tool = out
    assert assistant["role"] == "assistant"
    # Only tool calls, no text: content is "" (not None), which every chat template renders.
    assert assistant["content"] == ""
    calls = assistant["tool_calls"]
    assert [c["id"] for c in calls] == ["c1", "c2"]
    assert all(c["type"] == "function" for c in calls)
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert json.loads(calls[1]["function"]["arguments"]) == {}
    assert tool == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert ai.content == ""  # the caller's message is not changed


def test_null_assistant_content_becomes_empty_string(monkeypatch: pytest.MonkeyPatch) -> None:
    # langchain-core gives "" today; the guard keeps it so if a release gives OpenAI's null.
    call = {"type": "function", "id": "c1", "function": {"name": "f", "arguments": "{}"}}
    converted = [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "user", "content": None},
    ]
    monkeypatch.setattr(
        _messages, "convert_to_openai_messages", lambda messages, text_format: converted
    )
    out = to_openai_messages([AIMessage(""), HumanMessage("")])
    assert out[0] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert out[1] == {"role": "user", "content": None}  # only assistant turns are filled in


def test_assistant_text_with_tool_calls_keeps_text() -> None:
    ai = AIMessage("Let me check.", tool_calls=[{"name": "f", "args": {"x": 1}, "id": "c1"}])
    (out,) = to_openai_messages([ai])
    assert out["content"] == "Let me check."
    assert json.loads(out["tool_calls"][0]["function"]["arguments"]) == {"x": 1}


def test_text_parts_are_joined_into_a_string() -> None:
    human = HumanMessage([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
    tool = ToolMessage([{"type": "text", "text": "t1"}, "t2"], tool_call_id="c1")
    out = to_openai_messages([human, tool])
    assert out[0] == {"role": "user", "content": "a\nb"}
    assert out[1]["content"] == "t1\nt2"


def test_images_keep_the_content_parts() -> None:
    data_url = "data:image/png;base64,iVBORw0KGgo="
    out = to_openai_messages(
        [
            HumanMessage(
                [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ]
            ),
            # LangChain's provider-neutral image block becomes OpenAI's image_url part.
            HumanMessage([{"type": "image", "url": "https://example.com/cat.png"}]),
        ]
    )
    assert out[0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": data_url}},
    ]
    assert out[1]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    ]


def test_result_is_json_serialisable() -> None:
    out = to_openai_messages(
        [
            HumanMessage("q"),
            AIMessage("", tool_calls=[{"name": "f", "args": {"n": [1, 2]}, "id": "c"}]),
            ToolMessage("r", tool_call_id="c"),
        ]
    )
    assert json.loads(json.dumps(out)) == out


# -- usage ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (None, None),
        ({}, None),
        (
            {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
        ),
        # A missing (or zero) total is the sum.
        (
            {"prompt_tokens": 10, "completion_tokens": 5},
            {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
        ),
        (
            {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 0},
            {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
        ),
        (
            {"prompt_tokens": None, "completion_tokens": 2, "total_tokens": None},
            {"input_tokens": 0, "output_tokens": 2, "total_tokens": 2},
        ),
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 1,
                "total_tokens": 101,
                "prompt_tokens_details": {"cached_tokens": 64},
            },
            {
                "input_tokens": 100,
                "output_tokens": 1,
                "total_tokens": 101,
                "input_token_details": {"cache_read": 64},
            },
        ),
        # No cache hit (or vLLM's null details): no details at all.
        (
            {"prompt_tokens": 2, "completion_tokens": 1, "prompt_tokens_details": None},
            {"input_tokens": 2, "output_tokens": 1, "total_tokens": 3},
        ),
        (
            {
                "prompt_tokens": 2,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
            {"input_tokens": 2, "output_tokens": 1, "total_tokens": 3},
        ),
    ],
)
def test_usage_from_openai(usage: dict[str, Any] | None, expected: dict[str, Any] | None) -> None:
    assert usage_from_openai(usage) == expected


# -- non-streamed responses -----------------------------------------------------------------------

SERVICE_META = {
    "request_id": "req-1",
    "cold_start": True,
    "queue_wait_ms": 41234.5,
    "engine_ms": 812.0,
    "cost": 0.0123,
}


def completion(
    message: dict[str, Any],
    *,
    finish_reason: str = "stop",
    usage: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage or {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        **extra,
    }


def test_text_answer() -> None:
    result = chat_result_from_response(
        completion(
            {"role": "assistant", "content": "Bonjour."},
            system_fingerprint="fp-1",
            vllm_autoscale=SERVICE_META,
        )
    )
    (generation,) = result.generations
    message = generation.message
    assert isinstance(message, AIMessage)
    assert message.content == "Bonjour."
    assert message.id == "chatcmpl-1"
    assert message.tool_calls == [] and message.invalid_tool_calls == []
    assert message.usage_metadata == {"input_tokens": 12, "output_tokens": 3, "total_tokens": 15}
    assert message.response_metadata == {
        "model_provider": PROVIDER,
        "model_name": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "id": "chatcmpl-1",
        "system_fingerprint": "fp-1",
        "finish_reason": "stop",
        "service": SERVICE_META,
    }
    assert message.response_metadata["service"]["cold_start"] is True
    assert generation.generation_info == {"finish_reason": "stop"}
    assert result.llm_output == {
        "model_name": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "token_usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        "system_fingerprint": "fp-1",
    }


def test_missing_fields_are_left_out_of_response_metadata() -> None:
    result = chat_result_from_response(
        {"choices": [{"message": {"content": "x"}, "finish_reason": None}]}
    )
    message = result.generations[0].message
    assert isinstance(message, AIMessage)
    assert message.response_metadata == {"model_provider": PROVIDER}
    assert message.usage_metadata is None
    assert message.id is None


def test_null_content_becomes_empty_string() -> None:
    result = chat_result_from_response(completion({"role": "assistant", "content": None}))
    assert result.generations[0].message.content == ""


def test_tool_calls_valid_and_invalid() -> None:
    payload = completion(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "c2", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Par'}},
                {"id": "c3", "type": "function", "function": {"name": "now", "arguments": ""}},
            ],
        },
        finish_reason="tool_calls",
    )  # fmt: skip
    message = chat_result_from_response(payload).generations[0].message
    assert isinstance(message, AIMessage)
    assert message.tool_calls == [
        {"name": "get_weather", "args": {"city": "Paris"}, "id": "c1", "type": "tool_call"},
        {"name": "now", "args": {}, "id": "c3", "type": "tool_call"},
    ]
    (invalid,) = message.invalid_tool_calls
    assert invalid["id"] == "c2" and invalid["name"] == "get_weather"
    assert invalid["args"] == '{"city": "Par'  # the raw text, for the caller to inspect
    assert invalid["error"] and "not valid JSON" in invalid["error"]
    assert message.response_metadata["finish_reason"] == "tool_calls"


def test_tool_call_without_function_is_skipped() -> None:
    payload = completion({"content": "", "tool_calls": [{"id": "c1", "type": "function"}]})
    message = chat_result_from_response(payload).generations[0].message
    assert isinstance(message, AIMessage)
    assert message.tool_calls == [] and message.invalid_tool_calls == []


@pytest.mark.parametrize("arguments", ["[1, 2]", "5", '"Paris"'])
def test_non_object_arguments_become_invalid_tool_calls(arguments: str) -> None:
    payload = completion(
        {"content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
        ]},
        finish_reason="tool_calls",
    )  # fmt: skip
    message = chat_result_from_response(payload).generations[0].message
    assert isinstance(message, AIMessage)
    assert message.tool_calls == []
    assert [(c["id"], c["args"]) for c in message.invalid_tool_calls] == [("c1", arguments)]


@pytest.mark.parametrize("key", ["reasoning", "reasoning_content"])
def test_reasoning_goes_to_additional_kwargs(key: str) -> None:
    payload = completion({"content": "42", key: "6 times 7"})
    message = chat_result_from_response(payload).generations[0].message
    assert message.content == "42"
    assert message.additional_kwargs == {"reasoning_content": "6 times 7"}


def test_no_reasoning_leaves_additional_kwargs_empty() -> None:
    payload = completion({"content": "42", "reasoning_content": None})
    assert chat_result_from_response(payload).generations[0].message.additional_kwargs == {}


def test_logprobs_are_kept() -> None:
    logprobs = {"content": [{"token": "Hi", "logprob": -0.1, "top_logprobs": []}]}
    payload = completion({"content": "Hi"})
    payload["choices"][0]["logprobs"] = logprobs
    generation = chat_result_from_response(payload).generations[0]
    assert generation.message.response_metadata["logprobs"] == logprobs
    assert generation.generation_info == {"finish_reason": "stop", "logprobs": logprobs}


def test_one_generation_per_choice() -> None:
    payload = completion({"content": "a"})
    payload["choices"].append({"index": 1, "message": {"content": "b"}, "finish_reason": "length"})
    result = chat_result_from_response(payload)
    assert [g.message.content for g in result.generations] == ["a", "b"]
    assert [g.generation_info for g in result.generations] == [
        {"finish_reason": "stop"},
        {"finish_reason": "length"},
    ]
    assert [g.message.response_metadata["finish_reason"] for g in result.generations] == [
        "stop",
        "length",
    ]


@pytest.mark.parametrize("choices", [[], None])
def test_no_choices_gives_no_generations(choices: list[Any] | None) -> None:
    result = chat_result_from_response({"id": "x", "choices": choices})
    assert result.generations == []


# -- streamed responses ---------------------------------------------------------------------------


def event(delta: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``finish_reason``/``logprobs`` go on the choice."""
    choice: dict[str, Any] = {"index": 0, "delta": delta or {}}
    for key in ("finish_reason", "logprobs"):
        if key in fields:
            choice[key] = fields.pop(key)
    base: dict[str, Any] = {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [choice],
    }
    return base | fields


def usage_event(**fields: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        **fields,
    }


def ai(chunk: ChatGenerationChunk) -> AIMessageChunk:
    assert isinstance(chunk.message, AIMessageChunk)
    return chunk.message


def run_stream(events: list[dict[str, Any]]) -> tuple[list[ChatGenerationChunk], AIMessageChunk]:
    """Feed every event; return the chunks handed out (final one included) and their sum."""
    state = StreamState()
    chunks = [chunk for e in events if (chunk := state.feed(e)) is not None]
    chunks.append(state.final_chunk())
    merged = chunks[0].message
    for chunk in chunks[1:]:
        merged = merged + chunk.message
    assert isinstance(merged, AIMessageChunk)
    return chunks, merged


TEXT_STREAM = [
    event({"role": "assistant", "content": ""}, usage=None),
    event({"content": "Bon"}, usage=None),
    event({"content": "jour"}, usage=None),
    event({}, finish_reason="stop", usage=None),
    usage_event(vllm_autoscale=SERVICE_META),
]


def test_text_stream() -> None:
    chunks, merged = run_stream(TEXT_STREAM)
    # Role-only and finish-only events make no chunk; the final one is always there.
    assert [c.message.content for c in chunks] == ["Bon", "jour", ""]
    assert merged.content == "Bonjour"
    assert merged.id == "chatcmpl-s"
    assert merged.usage_metadata == {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}
    assert merged.response_metadata == {
        "model_provider": PROVIDER,
        "model_name": "m",
        "id": "chatcmpl-s",
        "finish_reason": "stop",
        "service": SERVICE_META,
    }
    assert chunks[-1].generation_info == {"finish_reason": "stop"}
    assert ai(chunks[-1]).chunk_position == "last"


def test_usage_model_and_finish_reason_are_on_exactly_one_chunk() -> None:
    chunks, merged = run_stream(TEXT_STREAM)
    assert [ai(c).usage_metadata is not None for c in chunks] == [False, False, True]
    assert ["finish_reason" in c.message.response_metadata for c in chunks] == [False] * 2 + [True]
    assert ["model_name" in c.message.response_metadata for c in chunks] == [False] * 2 + [True]
    assert [c.generation_info for c in chunks[:-1]] == [None, None]
    # Merging does not double anything up.
    assert merged.usage_metadata is not None and merged.usage_metadata["total_tokens"] == 7
    assert merged.response_metadata["finish_reason"] == "stop"
    assert merged.response_metadata["model_provider"] == PROVIDER


def test_finish_reason_on_a_content_event() -> None:
    chunks, merged = run_stream([event({"content": "done"}, finish_reason="length")])
    assert merged.content == "done"
    assert "finish_reason" not in chunks[0].message.response_metadata
    assert chunks[-1].message.response_metadata["finish_reason"] == "length"


def test_null_usage_does_not_clear_earlier_usage() -> None:
    # With continuous usage stats every chunk carries usage: the latest wins; null is skipped.
    events = [
        event({"content": "a"}, usage={"prompt_tokens": 5, "completion_tokens": 1}),
        event({"content": "b"}, usage={"prompt_tokens": 5, "completion_tokens": 2}),
        event({}, finish_reason="stop", usage=None),
    ]
    chunks, merged = run_stream(events)
    assert [ai(c).usage_metadata for c in chunks[:-1]] == [None, None]
    assert merged.usage_metadata == {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}


def test_stream_without_usage_or_finish() -> None:
    chunks, merged = run_stream([event({"content": "x"})])
    assert merged.content == "x"
    assert merged.usage_metadata is None
    assert chunks[-1].generation_info is None
    assert "finish_reason" not in merged.response_metadata


def test_empty_stream_still_has_a_final_chunk() -> None:
    state = StreamState()
    final = state.final_chunk()
    assert final.message.content == ""
    assert final.message.response_metadata == {"model_provider": PROVIDER}
    assert final.generation_info is None


def test_tool_call_deltas_are_merged() -> None:
    def call(**fields: Any) -> dict[str, Any]:
        return event({"tool_calls": [fields]})

    events = [
        event({"role": "assistant", "content": None}),
        call(index=0, id="c1", type="function", function={"name": "get_weather", "arguments": ""}),
        call(index=0, function={"arguments": '{"city": '}),
        call(index=0, function={"arguments": '"Paris"}'}),
        # The second call's name and arguments come in separate deltas, matched by index.
        call(index=1, id="c2", type="function", function={"name": "now", "arguments": "{"}),
        call(index=1, function={"arguments": "}"}),
        call(index=2, id="c3", type="function", function={"name": "bad", "arguments": "oops"}),
        call(index=3, id="c4", type="function", function={"name": "arr", "arguments": "[1]"}),
        event({}, finish_reason="tool_calls"),
        usage_event(),
    ]
    chunks, merged = run_stream(events)
    assert len(chunks) == 8  # seven tool-call deltas and the final chunk
    assert merged.tool_calls == [
        {"name": "get_weather", "args": {"city": "Paris"}, "id": "c1", "type": "tool_call"},
        {"name": "now", "args": {}, "id": "c2", "type": "tool_call"},
    ]
    # (langchain-core completes truncated JSON such as '{"a": "x' leniently when chunks
    # merge; only text that is no JSON at all, or not an object, is invalid.)
    assert [(c["id"], c["name"], c["args"]) for c in merged.invalid_tool_calls] == [
        ("c3", "bad", "oops"),
        ("c4", "arr", "[1]"),
    ]
    assert merged.response_metadata["finish_reason"] == "tool_calls"


def test_tool_call_index_defaults_to_position() -> None:
    state = StreamState()
    chunk = state.feed(
        event({"tool_calls": [
            {"id": "a", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "function": {"name": "g", "arguments": "{}"}},
        ]})
    )  # fmt: skip
    assert chunk is not None
    assert isinstance(chunk.message, AIMessageChunk)
    assert [(c["id"], c["index"]) for c in chunk.message.tool_call_chunks] == [("a", 0), ("b", 1)]


def test_logprobs_chunks() -> None:
    lp1 = {"content": [{"token": "a", "logprob": -0.5}]}
    lp2 = {"content": [{"token": "", "logprob": -0.1}]}
    state = StreamState()
    first = state.feed(event({"content": "a"}, logprobs=lp1))
    # A chunk with logprobs but no text is still handed out.
    second = state.feed(event({"content": ""}, logprobs=lp2))
    assert first is not None and second is not None
    assert first.message.response_metadata == {"logprobs": lp1}
    assert first.generation_info == {"logprobs": lp1}
    assert second.message.content == "" and second.generation_info == {"logprobs": lp2}


@pytest.mark.parametrize("key", ["reasoning", "reasoning_content"])
def test_streamed_reasoning_matches_non_streamed(key: str) -> None:
    _, merged = run_stream(
        [
            event({key: "6 times "}),
            event({key: "7"}),
            event({"content": "42"}, finish_reason="stop"),
        ]
    )
    assert merged.content == "42"
    assert merged.additional_kwargs.get("reasoning_content") == "6 times 7"


def test_stream_and_non_stream_agree() -> None:
    """The same answer, streamed or not, gives the same message."""
    tool_call = {"id": "c1", "type": "function",
                 "function": {"name": "f", "arguments": '{"q": "x"}'}}  # fmt: skip
    whole = (
        chat_result_from_response(
            completion(
                {"role": "assistant", "content": "ok", "tool_calls": [tool_call]},
                finish_reason="tool_calls",
                usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
                model="m",
                id="chatcmpl-s",
            )
        )
        .generations[0]
        .message
    )
    _, streamed = run_stream(
        [
            event({"content": "o"}),
            event({"content": "k"}),
            event({"tool_calls": [{"index": 0, **tool_call}]}),
            event({}, finish_reason="tool_calls"),
            usage_event(),
        ]
    )
    assert isinstance(whole, AIMessage)
    assert streamed.content == whole.content
    assert streamed.tool_calls == whole.tool_calls
    assert streamed.usage_metadata == whole.usage_metadata
    assert streamed.response_metadata == whole.response_metadata
    assert streamed.id == whole.id


# -- batch keys -----------------------------------------------------------------------------------


def test_dumps_body_is_order_independent() -> None:
    a = {"messages": [{"role": "user", "content": "x"}], "temperature": 0, "stop": ["a"]}
    b = {"stop": ["a"], "temperature": 0, "messages": [{"content": "x", "role": "user"}]}
    assert dumps_body(a) == dumps_body(b)
    assert dumps_body(a) != dumps_body(a | {"temperature": 1})


def test_dumps_body_accepts_non_json_values() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd-value"

    assert '"odd-value"' in dumps_body({"x": Odd()})


def test_messages_from_langchain_reach_the_body_unchanged() -> None:
    history: list[BaseMessage] = [HumanMessage("q")]
    body = {"messages": to_openai_messages(history)}
    assert json.loads(dumps_body(body)) == {"messages": [{"role": "user", "content": "q"}]}
