"""Streamed tool calls, each sent whole once its arguments are complete JSON.

vLLM streams a tool call as deltas: the id and name, then the arguments piece by piece. Its
streaming parsers do not always end a call's arguments where its non-streamed parser does
(vllm-project/vllm #9693, #15274, #21046, #28297). Two breaks show on the local stack:

* a call cut by ``max_tokens``: the stream has the call with half its arguments (not JSON),
  where the non-streamed answer has no call (its parser fails, the text is the content);
* ``</tool_call>`` inside a string argument: the streamed arguments stop there (not JSON),
  where the non-streamed answer again has no call.

``ToolCallAssembler`` holds each call's deltas and sends the call in one delta (index, id,
type, name, the whole arguments) as soon as its arguments parse as a JSON object. Text deltas
are not held. A call whose arguments never complete is not sent as a call: when its choice
finishes, what it streamed goes out as content, as in vLLM's non-streamed answer. A client
then never sees arguments that do not parse, and the calls it assembles from the stream are
the non-streamed ones.

The service makes one only for a request that offers tools; other streams pass untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from ...core.contract import ENDPOINT_KEY

__all__ = ["ToolCallAssembler", "wants_tool_assembly"]

log = logging.getLogger("vllm_autoscale.wrapper")


def wants_tool_assembly(body: dict[str, Any]) -> bool:
    """Whether a stream for this request may carry chat tool calls (tools offered, not
    "none"; a Responses stream sends its calls as events of their own)."""
    if body.get(ENDPOINT_KEY) not in (None, "/v1/chat/completions"):
        return False
    return bool(body.get("tools")) and body.get("tool_choice") != "none"


@dataclass
class _Call:
    id: str = ""
    type: str = "function"
    name: str = ""
    arguments: str = ""
    sent: bool = False


def _complete(arguments: str) -> bool:
    """Whether ``arguments`` is a whole JSON object (parsed only when it ends in ``}``)."""
    if not arguments.rstrip().endswith("}"):
        return False
    try:
        return isinstance(orjson.loads(arguments), dict)
    except orjson.JSONDecodeError:
        return False


class ToolCallAssembler:
    """One per stream: ``feed`` each engine chunk, send what it returns (None: nothing now);
    at the end of the stream send ``finish()`` if it is not None."""

    __slots__ = ("_calls", "_last", "_sent")

    def __init__(self) -> None:
        self._calls: dict[tuple[int, int], _Call] = {}
        """(choice index, the engine's call index) -> the call so far."""
        self._sent: dict[int, int] = {}
        """choice index -> calls sent whole (the next sent call's index)."""
        self._last: dict[str, Any] = {}

    def feed(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        choices = chunk.get("choices")
        if not choices:
            return chunk
        kept = []
        for choice in choices:
            delta = choice.get("delta")
            deltas = delta.get("tool_calls") if delta else None
            if deltas is None and choice.get("finish_reason") is None:
                kept.append(choice)  # text: as it came
                continue
            if self._assemble(choice, deltas or []):
                kept.append(choice)
        self._last = chunk
        if len(kept) == len(choices):
            return chunk
        if not kept:
            return None
        chunk["choices"] = kept
        return chunk

    def finish(self) -> dict[str, Any] | None:
        """A last chunk with the text of calls left open by a stream that ended without a
        finish reason (None: none left)."""
        indexes = sorted({i for i, _ in self._calls})
        choices = []
        for i in indexes:
            choice: dict[str, Any] = {"index": i, "delta": {}, "finish_reason": None}
            self._close(choice, i)
            if choice["delta"]:
                choices.append(choice)
        if not choices:
            return None
        last: dict[str, Any] = {
            k: self._last[k] for k in ("id", "object", "created", "model") if k in self._last
        }
        last["choices"] = choices
        return last

    # -- one choice -------------------------------------------------------------------------------

    def _assemble(self, choice: dict[str, Any], deltas: list[dict[str, Any]]) -> bool:
        """Hold ``deltas``, put the calls they complete (and, at the choice's finish, the text
        of those left open) into ``choice``; False: nothing left worth sending."""
        index = int(choice.get("index") or 0)
        ready = []
        for position, piece in enumerate(deltas):
            raw_index = piece.get("index")
            key = (index, position if raw_index is None else int(raw_index))
            call = self._calls.get(key)
            if call is None:
                call = self._calls[key] = _Call()
            function = piece.get("function") or {}
            pieces = function.get("arguments") or ""
            if call.sent:
                if pieces.strip():
                    log.warning("tool call %s: dropped arguments after its JSON ended: %r",
                                call.id, pieces)  # fmt: skip
                continue
            call.id = call.id or piece.get("id") or ""
            call.type = piece.get("type") or call.type
            call.name += function.get("name") or ""
            call.arguments += pieces
            if pieces and _complete(call.arguments):
                call.sent = True
                ready.append(self._whole(index, call))
        delta: dict[str, Any] = choice.get("delta") or {}
        choice["delta"] = delta
        delta.pop("tool_calls", None)
        if ready:
            delta["tool_calls"] = ready
        if choice.get("finish_reason") is not None:
            self._close(choice, index)
        return bool(
            any(v is not None for v in delta.values())
            or choice.get("finish_reason") is not None
            or choice.get("logprobs") is not None
        )

    def _whole(self, index: int, call: _Call) -> dict[str, Any]:
        position = self._sent.get(index, 0)
        self._sent[index] = position + 1
        return {
            "index": position,
            "id": call.id,
            "type": call.type,
            "function": {"name": call.name, "arguments": call.arguments},
        }

    def _close(self, choice: dict[str, Any], index: int) -> None:
        """The choice is done: the text of its calls still open goes out as its content."""
        text = []
        for key in [k for k in self._calls if k[0] == index]:
            call = self._calls.pop(key)
            if not call.sent:
                log.warning("tool call %s (%s) ended with arguments that are not a JSON "
                            "object; sent as text", call.id, call.name)  # fmt: skip
                text.append(call.arguments)
        if text:
            delta = choice["delta"]
            delta["content"] = (delta.get("content") or "") + "".join(text)
