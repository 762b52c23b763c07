"""Standard content blocks (``output_version="v1"``) in both directions, offline.

Answers are recorded vLLM responses and SSE streams; a fake service checks each request the
way vLLM 0.32 does (content part types, the assistant fields it reads), so a history that
vLLM would refuse fails here too.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from pydantic import BaseModel

from langchain_vllm_autoscale import ChatVLLMAutoscale
from langchain_vllm_autoscale._http import ServiceClient, normalize_base_url
from langchain_vllm_autoscale._messages import (
    PROVIDER,
    StreamState,
    chat_result_from_response,
    to_openai_messages,
)

MODEL = "Qwen/Qwen3-0.6B"
USAGE = {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}
CALL = {"id": "call-1", "type": "function",
        "function": {"name": "multiply", "arguments": '{"a": 6, "b": 7}'}}  # fmt: skip

# The content part types vLLM 0.32 accepts, as its 400 lists them.
VLLM_PART_TYPES = {"audio_embeds", "audio_url", "image_embeds", "image_pil", "image_url",
                   "input_audio", "input_image", "input_text", "output_text", "prompt_embeds",
                   "refusal", "text", "thinking", "tool_reference", "video_embeds",
                   "video_url"}  # fmt: skip


def completion(message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", **message},
                     "finish_reason": finish}],
        "usage": USAGE,
    }  # fmt: skip


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


# Turn 1: reasoning, a sentence, a tool call (as vLLM answers with a reasoning parser and a
# tool parser). Turn 2: the answer from the tool's result.
TURN_1 = completion(
    {"content": "Let me multiply.", "reasoning": "6 times 7; use the tool.", "tool_calls": [CALL]},
    "tool_calls",
)
TURN_1_EVENTS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning": "6 times 7; "}),
    chunk({"reasoning": "use the tool."}),
    chunk({"content": "Let me "}),
    chunk({"content": "multiply."}),
    chunk({"tool_calls": [{"index": 0, "id": "call-1", "type": "function",
                           "function": {"name": "multiply", "arguments": '{"a": 6'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": ', "b": 7}'}}]}),
    chunk({}, "tool_calls"),
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": MODEL, "choices": [],
     "usage": USAGE},
]  # fmt: skip
TURN_2 = completion({"content": "6 times 7 is 42."}, "stop")
TURN_2_EVENTS = [
    chunk({"content": "6 times 7 "}),
    chunk({"content": "is 42."}),
    chunk({}, "stop"),
]


def vllm_check(message: dict[str, Any]) -> str | None:
    """What vLLM 0.32 would answer 400 for in one message, or None."""
    content = message.get("content")
    for part in content if isinstance(content, list) else []:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in VLLM_PART_TYPES:
            return f"Unsupported chat content part type: {kind!r}"
    for call in message.get("tool_calls") or []:
        if set(call) - {"id", "type", "function"} or not isinstance(
            call["function"].get("arguments"), str
        ):
            return f"malformed tool call: {call}"
    return None


class FakeVLLM:
    """Answers turn 1, then turn 2 once a tool result is in the history; checks requests."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        for message in body["messages"]:
            if error := vllm_check(message):
                return httpx.Response(400, json={"error": {"message": error, "code": 400}})
        second = any(m["role"] == "tool" for m in body["messages"])
        if body.get("stream"):
            events = TURN_2_EVENTS if second else TURN_1_EVENTS
            sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=TURN_2 if second else TURN_1)


def make_llm(fake: FakeVLLM, **kwargs: Any) -> ChatVLLMAutoscale:
    transport = httpx.MockTransport(fake)
    return ChatVLLMAutoscale(
        base_url="http://wrapper.test",
        http_transport=transport,
        http_async_transport=transport,
        **kwargs,
    )


def ask(llm: ChatVLLMAutoscale, mode: str, history: list[BaseMessage]) -> AIMessage:
    if mode == "invoke":
        return llm.invoke(history)
    chunks = list(llm.stream(history))
    merged = chunks[0]
    for piece in chunks[1:]:
        merged = merged + piece
    assert isinstance(merged, AIMessageChunk)
    return merged


def without_index(message: BaseMessage) -> list[dict[str, Any]]:
    """v1 blocks without the stream's merge index (invoke has none)."""
    return [{k: v for k, v in b.items() if k != "index"} for b in message.content]  # type: ignore[union-attr]


# -- responses ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_v0_answer_keeps_reasoning_in_additional_kwargs(mode: str) -> None:
    message = ask(make_llm(FakeVLLM(), output_version="v0"), mode, [HumanMessage("6*7?")])
    assert message.content == "Let me multiply."
    assert message.additional_kwargs["reasoning_content"] == "6 times 7; use the tool."
    assert message.tool_calls == [
        {"name": "multiply", "args": {"a": 6, "b": 7}, "id": "call-1", "type": "tool_call"}
    ]
    # v0 content stays a string; the standard blocks are still derivable.
    assert [b["type"] for b in message.content_blocks] == ["reasoning", "text", "tool_call"]


@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_v1_answer_is_standard_blocks(mode: str) -> None:
    message = ask(make_llm(FakeVLLM(), output_version="v1"), mode, [HumanMessage("6*7?")])
    assert without_index(message) == [
        {"type": "reasoning", "reasoning": "6 times 7; use the tool."},
        {"type": "text", "text": "Let me multiply."},
        {"type": "tool_call", "id": "call-1", "name": "multiply", "args": {"a": 6, "b": 7}},
    ]
    assert message.response_metadata["output_version"] == "v1"
    assert message.response_metadata["model_provider"] == PROVIDER
    assert message.tool_calls[0]["args"] == {"a": 6, "b": 7}
    assert message.text == "Let me multiply."


def test_v1_stream_chunks_keep_calls_apart_from_text() -> None:
    """A call delta's own index (0) must not merge it into the reasoning block (index 0)."""
    chunks = list(make_llm(FakeVLLM(), output_version="v1").stream("6*7?"))
    call_blocks = [b for c in chunks for b in c.content if b["type"] == "tool_call_chunk"]
    assert [b["index"] for b in call_blocks] == ["lc_tc_0", "lc_tc_0"]
    assert "".join(b["args"] for b in call_blocks) == '{"a": 6, "b": 7}'
    other_indexes = {b["index"] for c in chunks for b in c.content if b not in call_blocks}
    assert other_indexes == {0, 1}  # reasoning, then text
    # The message's own tool_call_chunks keep OpenAI's integer index.
    assert {tc["index"] for c in chunks for tc in c.tool_call_chunks} == {0}


async def test_v1_astream_matches_invoke() -> None:
    llm = make_llm(FakeVLLM(), output_version="v1")
    chunks = [c async for c in llm.astream("6*7?")]
    merged = chunks[0]
    for piece in chunks[1:]:
        merged = merged + piece
    whole = await llm.ainvoke("6*7?")
    assert without_index(merged) == without_index(whole)


def test_env_selects_v1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LC_OUTPUT_VERSION", "v1")
    llm = make_llm(FakeVLLM())
    assert llm.output_version == "v1"
    assert [b["type"] for b in llm.invoke("6*7?").content] == ["reasoning", "text", "tool_call"]


def test_invalid_tool_call_is_a_block_too() -> None:
    bad = {"id": "c9", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    (generation,) = chat_result_from_response(
        completion({"content": None, "tool_calls": [bad]}, "tool_calls")
    ).generations
    assert generation.message.content_blocks == [
        {"type": "invalid_tool_call", "id": "c9", "name": "f", "args": "{oops",
         "error": generation.message.invalid_tool_calls[0]["error"]}
    ]  # fmt: skip


def test_structured_output_reads_v1_content() -> None:
    class Answer(BaseModel):
        value: int

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=completion({"content": '{"value": 42}'}, "stop"))

    transport = httpx.MockTransport(answer)
    llm = ChatVLLMAutoscale(base_url="http://w.test", http_transport=transport, output_version="v1")
    assert llm.with_structured_output(Answer).invoke("?") == Answer(value=42)


# -- requests: v1 histories in the wire format ----------------------------------------------------


@pytest.mark.parametrize("version", ["v0", "v1"])
@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_tool_loop_sends_the_same_wire_history(version: str, mode: str) -> None:
    """The agent loop: the model's own answer goes back with the tool result. vLLM must get
    OpenAI's shape whichever output version and call mode produced that answer."""
    fake = FakeVLLM()
    llm = make_llm(fake, output_version=version)
    question = HumanMessage("What is 6 times 7?")
    first = ask(llm, mode, [question])
    result = ToolMessage("42", tool_call_id=first.tool_calls[0]["id"])
    final = ask(llm, mode, [question, first, result])
    assert final.text == "6 times 7 is 42." and not final.tool_calls
    assert fake.bodies[1]["messages"] == [
        {"role": "user", "content": "What is 6 times 7?"},
        {
            "role": "assistant",
            "content": "Let me multiply.",
            "tool_calls": [{"type": "function", "id": "call-1",
                            "function": {"name": "multiply", "arguments": '{"a": 6, "b": 7}'}}],
            "reasoning": "6 times 7; use the tool.",
        },
        {"role": "tool", "tool_call_id": "call-1", "content": "42"},
    ]  # fmt: skip


def test_v1_history_without_the_fix_would_be_refused() -> None:
    """The fake refuses what vLLM refuses: the v1 content list, sent as it is."""
    v1 = make_llm(FakeVLLM(), output_version="v1").invoke("6*7?")
    assert vllm_check({"role": "assistant", "content": v1.content}) == (
        "Unsupported chat content part type: 'reasoning'"
    )
    (wire,) = to_openai_messages([v1])
    assert vllm_check(wire) is None


def test_tool_call_blocks_without_tool_calls_still_become_tool_calls() -> None:
    # A history rebuilt from content alone (tool_calls not filled in).
    ai = AIMessage(
        [{"type": "tool_call", "id": "c1", "name": "f", "args": {"x": "é"}}],
        response_metadata={"output_version": "v1"},
    )
    assert ai.tool_calls == []
    (wire,) = to_openai_messages([ai])
    assert wire == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "id": "c1", "function": {"name": "f", "arguments": '{"x": "é"}'}}
        ],
    }


def test_invalid_and_partial_call_blocks_are_not_content() -> None:
    ai = AIMessage(
        [
            {"type": "text", "text": "Trying.", "index": 1, "id": "t1"},
            {"type": "invalid_tool_call", "id": "c9", "name": "f", "args": "{", "error": "x"},
            {"type": "tool_call_chunk", "id": "c8", "name": "g", "args": "{", "index": "lc_tc_0"},
        ]
    )
    assert to_openai_messages([ai]) == [{"role": "assistant", "content": "Trying."}]


def test_reasoning_blocks_join_and_empty_ones_are_dropped() -> None:
    ai = AIMessage(
        [
            {"type": "reasoning", "reasoning": "first"},
            {"type": "reasoning"},  # a summary-less block: nothing to send
            {"type": "thinking", "thinking": "second"},
            {"type": "text", "text": "done"},
        ],
        additional_kwargs={"reasoning_content": "first"},  # v1 keeps the v0 copy: sent once
    )
    assert to_openai_messages([ai]) == [
        {"role": "assistant", "content": "done", "reasoning": "first\nsecond"}
    ]


def test_v0_reasoning_is_sent_back_too() -> None:
    ai = AIMessage("42", additional_kwargs={"reasoning_content": "6 times 7"})
    assert to_openai_messages([ai]) == [
        {"role": "assistant", "content": "42", "reasoning": "6 times 7"}
    ]


def test_v1_user_and_tool_blocks() -> None:
    out = to_openai_messages(
        [
            HumanMessage(
                content_blocks=[
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "base64": "iVBORw0KGgo=", "mime_type": "image/png"},
                    {"type": "image", "url": "https://example.com/cat.png"},
                ]
            ),
            ToolMessage(content_blocks=[{"type": "text", "text": "a cat"}], tool_call_id="c1"),
        ]
    )
    assert out == [
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
    ]  # fmt: skip
    assert all(vllm_check(m) is None for m in out)


def test_stream_state_names_the_provider_on_call_chunks_only() -> None:
    state = StreamState()
    text = state.feed(chunk({"content": "a"}))
    call = state.feed(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]}))
    assert text is not None and call is not None
    assert "model_provider" not in text.message.response_metadata
    assert call.message.response_metadata == {"model_provider": PROVIDER}


# -- base_url -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "root"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000"),
        (" https://ws--vllm-autoscale-wrapper.modal.run/v1 ", "https://ws--vllm-autoscale-wrapper.modal.run"),
        # Only a last path segment that is exactly "v1" goes.
        ("https://proxy.test/team/v10", "https://proxy.test/team/v10"),
        ("https://proxy.test/api/v1", "https://proxy.test/api"),
    ],
)  # fmt: skip
def test_normalize_base_url(given: str, root: str) -> None:
    assert normalize_base_url(given) == root
    client = ServiceClient(given, api_key=None, timeout=1, connect_timeout=1, max_retries=0)
    assert client.base_url == root


@pytest.mark.parametrize("base_url", ["http://w.test", "http://w.test/v1", "http://w.test/v1/"])
def test_both_url_forms_reach_the_same_routes(base_url: str) -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/v1/chat/completions":
            return httpx.Response(200, json=TURN_2)
        if request.url.path == "/warmup":
            return httpx.Response(200, json={"state": "starting"})
        return httpx.Response(404, json={"detail": "Not Found"})

    llm = ChatVLLMAutoscale(base_url=base_url, http_transport=httpx.MockTransport(answer))
    assert llm.invoke("hi").text == "6 times 7 is 42."
    assert llm.warmup() == {"state": "starting"}
    assert seen == ["/v1/chat/completions", "/warmup"]
