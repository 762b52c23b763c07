"""What a stream produced when the engine's usage never arrived, and how a batch is booked.

Every token the engine produced is booked to the key that asked. A stream normally ends with
the engine's usage chunk; when it does not (the client went away first, the stream failed
part-way, a cold fallback sent no usage), ``StreamTally`` has seen every chunk the engine
sent (it wraps the engine stream itself, ahead of the client), and ``estimate_usage`` counts
the prompt and the text with the served model's tokenizer, or, where there is none, from
the prompt's size and the chunks (vLLM sends about one chunk a token). The ledger marks such
rows ``estimated``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ...core.contract import RESPONSE_ENDS, Facts, Reply
from ...gateway.gateway import prompt_estimate
from ..tokenize.counter import TokenCounter

__all__ = ["RESPONSE_ENDS", "StreamTally", "as_chat_usage", "estimate_usage", "rough_usage",
           "split_by_model", "usage_of"]  # fmt: skip


def as_chat_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """A Responses answer's usage (``input_tokens``, ``output_tokens``) as the books count a
    chat's; any other (a chat's, an embeddings answer's) as it is."""
    if not usage or "input_tokens" not in usage:
        return usage
    prompt, completion = int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(usage.get("total_tokens") or prompt + completion)}  # fmt: skip


def usage_of(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """The usage a stream part carries: a chat or text completion's usage chunk (no choices),
    or a Responses stream's last event; None for any other part."""
    if chunk.get("type") in RESPONSE_ENDS:
        return as_chat_usage((chunk.get("response") or {}).get("usage"))
    if chunk.get("usage") and not chunk.get("choices"):
        return chunk["usage"]
    return None


log = logging.getLogger("vllm_autoscale.wrapper")


class StreamTally:
    """Text per choice, chunks with generated output, the engine's usage and facts, as the
    engine stream goes by."""

    def __init__(self) -> None:
        self.texts: dict[int, list[str]] = {}
        self.pieces = 0
        self.chunks_seen = 0
        """Chunks the engine sent: one, even a role-only chunk, means it read the prompt."""
        self.ended: tuple[float, float] | None = None
        """When the engine stream closed (``perf_counter``, Unix time): a stream booked later
        (its client gone, its tokens still to count) is timed to here, not to its booking."""
        self.usage: dict[str, Any] | None = None
        self.facts: Facts | None = None

    async def watch(self, source: AsyncIterator[Reply[dict[str, Any]]]) -> AsyncIterator[Any]:
        """``source``, unchanged, noted on the way."""
        try:
            async for item in source:
                if isinstance(item, Reply):
                    self.facts = item.facts or self.facts
                    self._note(item.body)
                yield item
        finally:
            self.ended = (time.perf_counter(), time.time())
            await source.aclose()  # type: ignore[attr-defined]

    def _note(self, chunk: dict[str, Any]) -> None:
        self.chunks_seen += 1
        usage = usage_of(chunk) or (chunk.get("usage") if chunk.get("choices") else None)
        if usage:
            self.usage = usage
        if str(chunk.get("type", "")).endswith(".delta") and isinstance(chunk.get("delta"), str):
            self.texts.setdefault(0, []).append(chunk["delta"])  # a Responses text or call part
            self.pieces += 1
            return
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            parts = [delta.get("content"), delta.get("reasoning_content"), delta.get("reasoning"),
                     choice.get("text")]  # a text completion's part  # fmt: skip
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                parts += [function.get("name"), function.get("arguments")]
            text = "".join(p for p in parts if isinstance(p, str))
            if text:
                self.texts.setdefault(int(choice.get("index") or 0), []).append(text)
                self.pieces += 1


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


def rough_usage(body: dict[str, Any], tally: StreamTally) -> dict[str, int]:
    """Without a tokenizer: the prompt at about 4 bytes a token, a token a chunk."""
    return _usage(prompt_estimate(body), tally.pieces)


async def estimate_usage(
    body: dict[str, Any], tally: StreamTally, counter: TokenCounter
) -> dict[str, int]:
    """The usage of a stream that ended without the engine's: counted with the served
    tokenizer (in a worker thread) when it is at hand, or roughly (a booking never waits
    for a tokenizer download)."""
    if not counter.at_hand:
        return rough_usage(body, tally)
    try:
        prompt = await counter.count_chat(body.get("messages") or [], body.get("tools"))
        completion = 0
        for pieces in tally.texts.values():
            counted = await counter.count_prompt("".join(pieces), add_special_tokens=False)
            completion += int(counted["count"])
        return _usage(int(prompt["count"]), completion)
    except Exception as exc:  # no tokenizer here, or a prompt the template refuses
        log.debug("counting a stream's tokens roughly: %s", exc)
        return rough_usage(body, tally)


def split_by_model(
    bodies: Sequence[dict[str, Any]], results: Sequence[dict[str, Any] | None]
) -> dict[str, list[dict[str, Any]]]:
    """A batch's answered items grouped by the model (or adapter) each named, so each is
    booked under its own name."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for body, result in zip(bodies, results, strict=True):
        if result is not None:
            groups.setdefault(str(body.get("model") or ""), []).append(result)
    return groups
