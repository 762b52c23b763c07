"""Streamed tool calls sent whole (``deploy/wrapper/serving/tool_stream.py``), offline.

``recorded_tool_streams.json`` holds three streams recorded from the local stack's vLLM
(SmolLM2-135M, hermes parser, ``--tool-strict-level parameter``), each with the non-streamed
answer to the same request at temperature 0:

* ``single_call``: a call streamed piece by piece, as it should be;
* ``cut_by_max_tokens``: the call's arguments cut by ``max_tokens``. The stream still has a
  call, with arguments that are not JSON; the non-streamed answer has none (the text is its
  content);
* ``closing_tag_in_string``: the model wrote ``</tool_call>`` inside a string argument. vLLM's
  streaming parser stops the arguments there (not JSON); its non-streamed parser gives up and
  answers with the text. Neither is the call the model made, but only the stream gives the
  client arguments that do not parse.

The tests show what a client makes of each stream as vLLM sends it, and what it gets from
the wrapper.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk

from deploy.wrapper.serving.tool_stream import ToolCallAssembler, wants_tool_assembly
from langchain_vllm_autoscale._messages import StreamState
from tests.unit_tests.wrapper_fake import MODEL, app_for, client_for, sse_data, sse_events

RECORDED: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "recorded_tool_streams.json").read_text(encoding="utf-8")
)


def _recorded(name: str) -> list[dict[str, Any]]:
    return copy.deepcopy(RECORDED[name]["stream"])


def assembled(chunks: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The wrapper's stream for these engine chunks."""
    assembler, out = ToolCallAssembler(), []
    for chunk in chunks:
        sent = assembler.feed(chunk)
        if sent is not None:
            out.append(copy.deepcopy(sent))
    last = assembler.finish()
    return out if last is None else [*out, last]


def openai_client(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """What an OpenAI client builds: string fields concatenated per call index."""
    calls: dict[int, dict[str, str]] = {}
    content, finish = "", None
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            content += delta.get("content") or ""
            finish = choice.get("finish_reason") or finish
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                slot["id"] += call.get("id") or ""
                slot["name"] += (call.get("function") or {}).get("name") or ""
                slot["arguments"] += (call.get("function") or {}).get("arguments") or ""
    return {"content": content, "finish_reason": finish, "calls": [calls[i] for i in sorted(calls)]}


def langchain_client(chunks: Iterable[dict[str, Any]]) -> AIMessageChunk:
    """What ``ChatVLLMAutoscale.stream`` gives, its chunks summed."""
    state = StreamState()
    messages = [g.message for c in chunks if (g := state.feed(c)) is not None]
    full = AIMessageChunk(content="")
    for message in [*messages, state.final_chunk().message]:
        full += message
    assert isinstance(full, AIMessageChunk)
    return full


def _parses(arguments: str) -> bool:
    try:
        json.loads(arguments)
    except ValueError:
        return False
    return True


# -- recorded streams -------------------------------------------------------------------------


def test_a_good_stream_goes_out_as_one_call_delta() -> None:
    raw = _recorded("single_call")
    whole = RECORDED["single_call"]["whole"]
    out = assembled(copy.deepcopy(raw))
    call_deltas = [
        tc for c in out for ch in c["choices"] for tc in ch["delta"].get("tool_calls", [])
    ]
    assert len(call_deltas) == 1
    [call] = call_deltas
    assert call["index"] == 0 and call["type"] == "function" and call["id"].startswith("chatcmpl")
    assert call["function"] == whole["tool_calls"][0]
    # role chunk, the call, the finish, the usage: the argument pieces are not sent one by one
    assert len(out) == 4 and len(raw) > 20
    assert out[0] == raw[0] and out[-1] == raw[-1]
    assert out[-2]["choices"][0]["finish_reason"] == "tool_calls"
    # Both clients get the same call from either stream.
    assert openai_client(out)["calls"] == openai_client(raw)["calls"]
    assert langchain_client(out).tool_calls == langchain_client(raw).tool_calls
    assert langchain_client(out).tool_calls[0]["args"] == json.loads(call["function"]["arguments"])


@pytest.mark.parametrize("name", ["cut_by_max_tokens", "closing_tag_in_string"])
def test_a_call_that_never_completes_is_text_as_in_the_whole_answer(name: str) -> None:
    raw, whole = _recorded(name), RECORDED[name]["whole"]
    assert whole["tool_calls"] == [] and whole["content"].startswith("<tool_call>")

    # As vLLM streams it: a call whose arguments are not JSON.
    naive = openai_client(raw)
    assert len(naive["calls"]) == 1 and not _parses(naive["calls"][0]["arguments"])
    # LangChain reads streamed arguments as partial JSON, leniently: the cut arguments become
    # a call that looks whole, where ``invoke`` has none. Its last argument is missing (cut
    # by max_tokens) or cut short (the closing tag).
    broken = langchain_client(raw)
    assert [c["name"] for c in broken.tool_calls] == ["send_email"]
    assert broken.invalid_tool_calls == []
    args = broken.tool_calls[0]["args"]
    if name == "cut_by_max_tokens":
        assert set(args) == {"to", "subject"}  # "body", a required argument, is gone
    else:
        model_wrote = "Please send me your plans by Friday.</tool_call>"
        assert model_wrote in whole["content"] and args["body"].endswith("by Friday.")

    # Through the wrapper: no call, as in the non-streamed answer; the text is the content.
    out = assembled(copy.deepcopy(raw))
    fixed = openai_client(out)
    assert fixed["calls"] == [] and fixed["finish_reason"] == whole["finish_reason"]
    assert fixed["content"] == naive["calls"][0]["arguments"]
    assert fixed["content"] in whole["content"]
    message = langchain_client(out)
    assert message.tool_calls == [] and message.invalid_tool_calls == []
    assert message.content == fixed["content"]
    assert message.response_metadata["finish_reason"] == whole["finish_reason"]
    assert out[-1] == raw[-1] and out[-1]["usage"]  # the usage chunk is untouched


def test_a_stream_whose_last_arguments_chunk_is_lost() -> None:
    """Without the chunk that closes the JSON, a naive client has a call it cannot parse."""
    raw = _recorded("single_call")
    last_args = max(
        i for i, c in enumerate(raw) if c["choices"] and c["choices"][0]["delta"].get("tool_calls")
    )
    del raw[last_args]
    assert not _parses(openai_client(raw)["calls"][0]["arguments"])
    out = openai_client(assembled(raw))
    assert out["calls"] == [] and out["content"].startswith('{"city": "Berlin"')


# -- how the arguments arrive -----------------------------------------------------------------


def _chunk(*calls: dict[str, Any], finish: str | None = None, content: Any = None) -> dict:
    delta: dict[str, Any] = {"content": content}
    if calls:
        delta["tool_calls"] = list(calls)
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _head(index: int, name: str, call_id: str) -> dict[str, Any]:
    return {"index": index, "id": call_id, "type": "function", "function": {"name": name}}


def _args(index: int, text: str) -> dict[str, Any]:
    return {"index": index, "function": {"arguments": text}}


def _sent_calls(out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [tc for c in out for ch in c["choices"] for tc in ch["delta"].get("tool_calls", [])]


@pytest.mark.parametrize(
    "pieces",
    [
        ['{"q": "a}', ' b"}'],  # a brace inside a string is not the end
        ['{"a": {"b": 1}', "}"],  # nor is a nested object's
        ['{"a": [1, {"b": "}"}]', ", ", '"c": "\\"}"}'],  # nor an escaped quote's
        ['{"k": "naïve ☕ 🚀"}'],  # one piece
        ["{", '"n": -1.5e3, "t": true, "z": null', "}\n"],  # trailing whitespace
    ],
)
def test_a_call_is_sent_once_its_arguments_are_whole_json(pieces: list[str]) -> None:
    chunks = [_chunk(_head(0, "f", "call-1"))] + [_chunk(_args(0, p)) for p in pieces]
    out = assembled([*chunks, _chunk(finish="tool_calls")])
    [call] = _sent_calls(out)
    assert call == {
        "index": 0,
        "id": "call-1",
        "type": "function",
        "function": {"name": "f", "arguments": "".join(pieces)},
    }
    # sent with the piece that completed it, not before, and the finish after it
    assert len(out) == 2 and out[0]["choices"][0]["delta"]["tool_calls"] == [call]
    assert out[1]["choices"][0]["finish_reason"] == "tool_calls"


def test_the_last_arguments_in_the_finish_chunk() -> None:
    """vLLM sends arguments it held back with the finish reason, in one chunk."""
    out = assembled(
        [
            _chunk(_head(0, "f", "c")),
            _chunk(_args(0, '{"a": ')),
            _chunk(_args(0, "1}"), finish="tool_calls"),
        ]
    )
    assert len(out) == 1
    choice = out[0]["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["delta"]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'


def test_several_calls_keep_their_own_index_id_and_name() -> None:
    out = assembled(
        [
            _chunk(content=""),
            _chunk(_head(0, "get_weather", "c0")),
            _chunk(_args(0, '{"city": "Paris"')),
            _chunk(_args(0, "}"), _head(1, "get_time", "c1")),
            _chunk(_args(1, '{"city": "Rome"}')),
            _chunk(finish="tool_calls"),
        ]
    )
    assert [(c["index"], c["id"], c["function"]["name"]) for c in _sent_calls(out)] == [
        (0, "c0", "get_weather"),
        (1, "c1", "get_time"),
    ]
    assert openai_client(out)["calls"][1]["arguments"] == '{"city": "Rome"}'


def test_a_broken_call_does_not_leave_a_gap_in_the_indexes() -> None:
    out = assembled(
        [
            _chunk(_head(0, "f", "c0"), _args(0, '{"a": "cut')),
            _chunk(_head(1, "g", "c1"), _args(1, '{"b": 2}')),
            _chunk(finish="tool_calls"),
        ]
    )
    client = openai_client(out)
    assert client["calls"] == [{"id": "c1", "name": "g", "arguments": '{"b": 2}'}]
    assert client["content"] == '{"a": "cut'
    assert _sent_calls(out)[0]["index"] == 0


def test_arguments_after_the_json_ended_are_dropped() -> None:
    out = assembled(
        [
            _chunk(_head(0, "f", "c0"), _args(0, '{"a": 1}')),
            _chunk(_args(0, "  ")),
            _chunk(_args(0, "}")),  # a parser's stray brace
            _chunk(finish="tool_calls"),
        ]
    )
    assert openai_client(out)["calls"] == [{"id": "c0", "name": "f", "arguments": '{"a": 1}'}]
    assert openai_client(out)["content"] == ""


def test_arguments_that_are_json_but_not_an_object_are_not_a_call() -> None:
    out = assembled([_chunk(_head(0, "f", "c0"), _args(0, "[1, 2]")), _chunk(finish="tool_calls")])
    assert openai_client(out) == {"content": "[1, 2]", "finish_reason": "tool_calls", "calls": []}


def test_a_stream_that_ends_without_a_finish_reason_still_gives_its_text() -> None:
    out = assembled([_chunk(_head(0, "f", "c0"), _args(0, '{"a": '))])
    assert out == [
        {
            "id": "chatcmpl-x",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": '{"a": '}, "finish_reason": None}],
        }
    ]
    assert ToolCallAssembler().finish() is None


def test_choices_are_assembled_apart() -> None:
    first = _chunk(_head(0, "f", "a0"), _args(0, '{"x": '))
    second = copy.deepcopy(first)
    second["choices"][0].update(index=1)
    second["choices"][0]["delta"]["tool_calls"] = [_head(0, "f", "b0"), _args(0, '{"y": 2}')]
    out = assembled([first, second, _chunk(_args(0, "1}"), finish="tool_calls")])
    sent = [
        (ch["index"], tc["id"], tc["function"]["arguments"])
        for c in out
        for ch in c["choices"]
        for tc in ch["delta"].get("tool_calls", [])
    ]
    assert sent == [(1, "b0", '{"y": 2}'), (0, "a0", '{"x": 1}')]


def test_text_passes_as_it_came_and_logprobs_are_not_held() -> None:
    assembler = ToolCallAssembler()
    text = _chunk(content="Hi")
    assert assembler.feed(text) is text
    usage = {"id": "x", "choices": [], "usage": {"prompt_tokens": 1}}
    assert assembler.feed(usage) is usage
    piece = _chunk(_head(0, "f", "c"))
    piece["choices"][0]["logprobs"] = {"content": [{"token": "{"}]}
    out = assembler.feed(piece)
    assert out is not None and out["choices"][0]["logprobs"] == piece["choices"][0]["logprobs"]
    assert "tool_calls" not in out["choices"][0]["delta"]


def test_only_requests_that_offer_tools_are_assembled() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert wants_tool_assembly({"tools": tools})
    assert wants_tool_assembly({"tools": tools, "tool_choice": "required"})
    assert not wants_tool_assembly({"tools": tools, "tool_choice": "none"})
    assert not wants_tool_assembly({"tools": []})
    assert not wants_tool_assembly({"messages": []})


# -- through the wrapper ----------------------------------------------------------------------

TOOL = {"type": "function", "function": {"name": "send_email", "parameters": {"type": "object"}}}
REQUEST = {"messages": [{"role": "user", "content": "mail"}], "stream": True}


async def _stream_through_wrapper(name: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    app, fake = app_for()
    fake.stream_chunks = _recorded(name)
    async with client_for(app) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    payloads = sse_data(sse_events(response.text))
    assert payloads[-1] == "[DONE]"
    return payloads[:-1]


async def test_the_wrapper_sends_calls_whole_when_tools_are_offered() -> None:
    body = {**REQUEST, "tools": [TOOL], "tool_choice": "required"}
    good = openai_client(await _stream_through_wrapper("single_call", body))
    assert (
        good["calls"][0]["arguments"]
        == RECORDED["single_call"]["whole"]["tool_calls"][0]["arguments"]
    )
    cut = openai_client(await _stream_through_wrapper("cut_by_max_tokens", body))
    assert cut["calls"] == [] and cut["finish_reason"] == "length" and cut["content"]


async def test_the_wrapper_leaves_a_stream_without_tools_as_the_engine_sent_it() -> None:
    raw = _recorded("cut_by_max_tokens")
    sent = await _stream_through_wrapper("cut_by_max_tokens", REQUEST)
    assert sent == [c for c in raw if c["choices"]]  # the usage chunk only when asked
