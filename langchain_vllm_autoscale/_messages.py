"""Pure conversions between LangChain messages and the OpenAI wire format the wrapper speaks.

No I/O here: every function is unit-tested without a server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    convert_to_openai_messages,
)
from langchain_core.messages import content as types
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.block_translators import register_translator
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.output_parsers.openai_tools import make_invalid_tool_call, parse_tool_call
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

__all__ = [
    "PROVIDER",
    "StreamState",
    "chat_result_from_response",
    "dumps_body",
    "to_openai_messages",
    "translate_content",
    "translate_content_chunk",
    "usage_from_openai",
]

PROVIDER = "vllm-autoscale"


# Standard (v1) blocks of an AI message that the OpenAI wire format carries outside
# `content`: vLLM rejects them as content parts ("Unsupported chat content part type").
_REASONING_BLOCKS = frozenset({"reasoning", "thinking"})
_TOOL_CALL_BLOCKS = frozenset({"tool_call", "tool_call_chunk", "invalid_tool_call"})


def to_openai_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as OpenAI chat messages (tool calls, tool results, content parts).

    AI messages in either output version give the same wire message: text blocks become
    ``content``, ``tool_call`` blocks (and ``tool_calls``) become ``tool_calls``, and
    reasoning (``reasoning`` blocks in v1, ``additional_kwargs["reasoning_content"]`` in v0)
    becomes the assistant message's ``reasoning`` field. Image blocks become ``image_url``
    parts.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, AIMessage):
            out.extend(_assistant_messages(message))
        else:
            out.extend(_convert(message))
    return out


def _convert(message: BaseMessage) -> list[dict[str, Any]]:
    # One message at a time: a message may become several (tool_result blocks) or none.
    converted = convert_to_openai_messages([message], text_format="string")
    return converted if isinstance(converted, list) else [converted]


def _assistant_messages(message: AIMessage) -> list[dict[str, Any]]:
    reasoning: list[str] = []
    block_calls: list[dict[str, Any]] = []
    if isinstance(message.content, list):
        kept: list[str | dict[str, Any]] = []
        for block in message.content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind in _REASONING_BLOCKS:
                text = block.get(kind)  # type: ignore[union-attr]
                if isinstance(text, str) and text:
                    reasoning.append(text)
            elif kind in _TOOL_CALL_BLOCKS:
                if kind == "tool_call":
                    block_calls.append(block)  # type: ignore[arg-type]
            else:
                kept.append(block)
        message = message.model_copy(update={"content": kept})
    if not reasoning and isinstance(message.additional_kwargs.get("reasoning_content"), str):
        reasoning.append(message.additional_kwargs["reasoning_content"])

    out = _convert(message)
    for wire in out:
        if wire.get("role") != "assistant":
            continue
        # A tool_call block whose call is missing from `tool_calls` (a history rebuilt from
        # content alone) is still a call the model made.
        known = {call.get("id") for call in message.tool_calls}
        extra = [_wire_tool_call(b) for b in block_calls if b.get("id") not in known]
        if extra:
            wire["tool_calls"] = [*(wire.get("tool_calls") or []), *extra]
        if reasoning and (text := "\n".join(reasoning).strip()):
            # vLLM (0.32) reads `reasoning` on assistant messages and hands the chat template
            # both `reasoning` and `reasoning_content`; it drops a `reasoning_content` key
            # sent by the client. Templates decide: most drop reasoning of earlier turns and
            # keep it inside a tool loop (interleaved thinking); templates without it ignore it.
            wire["reasoning"] = text
        # An assistant turn that only calls tools has no text: OpenAI's shape allows null,
        # chat templates render "" fine either way.
        if wire.get("content") is None:
            wire["content"] = ""
    return out


def _wire_tool_call(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "id": block.get("id"),
        "function": {
            "name": block.get("name"),
            "arguments": json.dumps(block.get("args") or {}, ensure_ascii=False),
        },
    }


def usage_from_openai(usage: dict[str, Any] | None) -> UsageMetadata | None:
    """OpenAI ``usage`` as LangChain ``UsageMetadata`` (None when the server sent none)."""
    if not usage:
        return None
    input_tokens = int(usage.get("prompt_tokens") or 0)
    output_tokens = int(usage.get("completion_tokens") or 0)
    metadata = UsageMetadata(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=int(usage.get("total_tokens") or input_tokens + output_tokens),
    )
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached:
        metadata["input_token_details"] = {"cache_read": int(cached)}
    return metadata


def _tool_calls(raw_calls: list[dict[str, Any]] | None) -> tuple[list[Any], list[Any]]:
    tool_calls, invalid = [], []
    for raw in raw_calls or []:
        try:
            parsed = parse_tool_call(raw, return_id=True)
        except Exception as exc:
            invalid.append(make_invalid_tool_call(raw, str(exc)))
            continue
        if parsed and not isinstance(parsed.get("args"), dict):
            # Valid JSON that is not an object ("[1, 2]", "5"): one bad call from a small
            # model is an invalid call, as in a stream, not a failed response.
            invalid.append(make_invalid_tool_call(raw, "arguments are not a JSON object"))
        elif parsed:
            tool_calls.append(parsed)
    return tool_calls, invalid


def _response_metadata(payload: dict[str, Any], choice: dict[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"model_provider": PROVIDER}
    for key in ("model", "id", "system_fingerprint"):
        if payload.get(key) is not None:
            meta["model_name" if key == "model" else key] = payload[key]
    if choice is not None:
        if choice.get("finish_reason") is not None:
            meta["finish_reason"] = choice["finish_reason"]
        if choice.get("logprobs") is not None:
            meta["logprobs"] = choice["logprobs"]
    if payload.get("vllm_autoscale"):
        # The wrapper's own facts: request id, cold start, queue wait, engine time, cost.
        meta["service"] = payload["vllm_autoscale"]
    return meta


def chat_result_from_response(payload: dict[str, Any]) -> ChatResult:
    """A non-streamed chat completion as a ``ChatResult`` (one generation per choice)."""
    usage = usage_from_openai(payload.get("usage"))
    generations = []
    for choice in payload.get("choices") or []:
        raw = choice.get("message") or {}
        tool_calls, invalid = _tool_calls(raw.get("tool_calls"))
        message = AIMessage(
            content=raw.get("content") or "",
            tool_calls=tool_calls,
            invalid_tool_calls=invalid,
            usage_metadata=usage,
            response_metadata=_response_metadata(payload, choice),
            id=payload.get("id"),
        )
        if raw.get("reasoning") or raw.get("reasoning_content"):
            message.additional_kwargs["reasoning_content"] = raw.get("reasoning") or raw.get(
                "reasoning_content"
            )
        info = {"finish_reason": choice.get("finish_reason")}
        if choice.get("logprobs") is not None:
            info["logprobs"] = choice["logprobs"]
        generations.append(ChatGeneration(message=message, generation_info=info))
    llm_output = {
        "model_name": payload.get("model"),
        "token_usage": payload.get("usage"),
        "system_fingerprint": payload.get("system_fingerprint"),
    }
    return ChatResult(generations=generations, llm_output=llm_output)


class StreamState:
    """Turns SSE chunks into ``ChatGenerationChunk``s.

    Content and tool-call deltas become chunks as they arrive; usage, model name and finish
    reason are collected and put on exactly one final chunk (``final_chunk``), so that merged
    chunks carry each of them once.
    """

    def __init__(self) -> None:
        self.payload: dict[str, Any] = {}
        self.finish_reason: str | None = None
        self.usage: UsageMetadata | None = None

    def feed(self, event: dict[str, Any]) -> ChatGenerationChunk | None:
        for key in ("id", "model", "system_fingerprint", "vllm_autoscale"):
            if event.get(key) is not None:
                self.payload[key] = event[key]
        usage = usage_from_openai(event.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = event.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta") or {}
        chunks = [
            tool_call_chunk(
                name=(call.get("function") or {}).get("name"),
                args=(call.get("function") or {}).get("arguments"),
                id=call.get("id"),
                index=int(call.get("index", i)),
            )
            for i, call in enumerate(delta.get("tool_calls") or [])
        ]
        content = delta.get("content") or ""
        logprobs = choice.get("logprobs")
        # vLLM's reasoning parsers stream the reasoning beside the content (the field's name
        # depends on the version); kept where the non-streamed path keeps it.
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if not content and not chunks and logprobs is None and not reasoning:
            return None
        message = AIMessageChunk(content=content, tool_call_chunks=chunks, id=event.get("id"))
        if chunks:
            # Names the provider's block translator (translate_content_chunk), which keeps a
            # v1 stream's call blocks apart from its text; merged, the name appears once.
            message.response_metadata["model_provider"] = PROVIDER
        if reasoning:
            message.additional_kwargs["reasoning_content"] = reasoning
        info = None
        if logprobs is not None:
            message.response_metadata["logprobs"] = logprobs
            info = {"logprobs": logprobs}
        return ChatGenerationChunk(message=message, generation_info=info)

    def final_chunk(self) -> ChatGenerationChunk:
        meta = _response_metadata(self.payload, {"finish_reason": self.finish_reason})
        message = AIMessageChunk(
            content="",
            usage_metadata=self.usage,
            response_metadata=meta,
            id=self.payload.get("id"),
            chunk_position="last",
        )
        info = {"finish_reason": self.finish_reason} if self.finish_reason else None
        return ChatGenerationChunk(message=message, generation_info=info)


# -- standard content blocks (output_version="v1", and `.content_blocks` in v0) -------------------


def _reasoning_blocks(message: AIMessage) -> list[types.ContentBlock]:
    reasoning = message.additional_kwargs.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        return [types.ReasoningContentBlock(type="reasoning", reasoning=reasoning)]
    return []


def translate_content(message: AIMessage) -> list[types.ContentBlock]:
    """Standard content blocks of an answer from this provider.

    Reasoning first (vLLM streams it before the answer), then the text, then the tool calls,
    valid and invalid. langchain-core calls this for ``content_blocks`` and, with
    ``output_version="v1"``, to fill ``content``.
    """
    if not isinstance(message.content, str):
        # Already blocks (a v1 message, or one built by hand): core's own parsing reads them.
        raise NotImplementedError
    blocks = _reasoning_blocks(message)
    if message.content:
        blocks.append(types.TextContentBlock(type="text", text=message.content))
    for call in message.tool_calls:
        blocks.append(
            types.ToolCall(
                type="tool_call", id=call.get("id"), name=call["name"], args=call["args"]
            )
        )
    for bad in message.invalid_tool_calls:
        blocks.append(
            types.InvalidToolCall(
                type="invalid_tool_call",
                id=bad.get("id"),
                name=bad.get("name"),
                args=bad.get("args"),
                error=bad.get("error"),
            )
        )
    return blocks


def translate_content_chunk(message: AIMessageChunk) -> list[types.ContentBlock]:
    """Standard content blocks of one streamed chunk from this provider.

    A tool-call delta becomes a ``tool_call_chunk`` block indexed ``lc_tc_<n>``, not ``n``:
    langchain-core numbers the reasoning and text blocks of a v1 stream 0, 1, ... and merges
    blocks by index, so a call's own index 0 would merge the call into the reasoning (or
    text) block. The last, merged chunk holds whole calls.
    """
    if not isinstance(message.content, str):
        raise NotImplementedError
    if message.chunk_position == "last" or not message.tool_call_chunks:
        return translate_content(message)
    blocks = _reasoning_blocks(message)
    if message.content:
        blocks.append(types.TextContentBlock(type="text", text=message.content))
    for position, chunk in enumerate(message.tool_call_chunks):
        index = chunk.get("index")
        blocks.append(
            types.ToolCallChunk(
                type="tool_call_chunk",
                id=chunk.get("id"),
                name=chunk.get("name"),
                args=chunk.get("args"),
                index=f"lc_tc_{position if index is None else index}",
            )
        )
    return blocks


# langchain-core finds a provider's translator by `response_metadata["model_provider"]`.
register_translator(PROVIDER, translate_content, translate_content_chunk)


def dumps_body(body: dict[str, Any]) -> str:
    """A stable key for a request body (the batch prefetch matches requests by it)."""
    return json.dumps(body, sort_keys=True, default=str)
