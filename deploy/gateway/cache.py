"""The response cache: exact replays of deterministic requests, without the GPU.

A request is cacheable when its answer is fixed: ``temperature`` 0 or a ``seed`` set. Its
key is the SHA-256 of the normalized engine body (model, messages, tools, every sampling
parameter; not ``stream`` or ``stream_options``, so a streamed and a plain request share an
entry) and of the caller's key name, unless the cache is shared across keys
(``VLLM_CACHE_SHARED``). Entries are bounded in number and bytes and expire after a TTL
(cachetools' ``TTLCache``, least recently used first). Streams fill the cache too: their
chunks are put together into the completion a plain request would have had.

``Cache-Control: no-cache`` skips the lookup (the fresh answer replaces the entry);
``no-store`` keeps the request away from the cache altogether.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from cachetools import TTLCache

__all__ = ["CacheLookup", "ResponseCache", "StreamRecorder", "canonical_json", "replay_chunks"]

_NOT_IN_KEY = frozenset({"stream", "stream_options", "user"})


def canonical_json(obj: Any) -> bytes:
    """``obj`` as JSON with sorted keys. orjson, or, for what it refuses (integers past 64
    bits, lone surrogates: the engine judges those, so they reach here), the standard
    library's ASCII-escaped output."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return json.dumps(obj, sort_keys=True, default=str).encode()


@dataclass(frozen=True)
class CacheLookup:
    key: str | None  # None: not cacheable, or no-store
    hit: dict[str, Any] | None = None
    store: bool = False


class ResponseCache:
    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        ttl: float,
        shared: bool = False,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries, self.shared = max_entries, shared
        self._entries: TTLCache[str, tuple[bytes, int]] = TTLCache(
            maxsize=max_bytes, ttl=ttl, timer=timer, getsizeof=lambda entry: entry[1]
        )
        self.hits = self.misses = 0

    @staticmethod
    def cacheable(body: dict[str, Any]) -> bool:
        return body.get("temperature") == 0 or body.get("seed") is not None

    def key_for(self, caller: str, body: dict[str, Any]) -> str:
        normalized = {k: v for k, v in body.items() if k not in _NOT_IN_KEY}
        scope = "*" if self.shared else caller
        return hashlib.sha256(canonical_json([scope, normalized])).hexdigest()

    def lookup(self, caller: str, body: dict[str, Any], cache_control: str = "") -> CacheLookup:
        if not self.cacheable(body):
            return CacheLookup(None)
        directives = (
            {d.strip().lower() for d in cache_control.split(",")} if cache_control else set()
        )
        if "no-store" in directives:
            return CacheLookup(None)
        key = self.key_for(caller, body)
        if "no-cache" not in directives:
            entry = self._entries.get(key)
            if entry is not None:
                self.hits += 1
                return CacheLookup(key, orjson.loads(entry[0]))
        self.misses += 1
        return CacheLookup(key, store=True)

    def put(self, key: str, completion: dict[str, Any]) -> None:
        clean = {k: v for k, v in completion.items() if k != "vllm_autoscale"}
        choices = clean.get("choices") or []
        if not choices or any(c.get("finish_reason") not in ("stop", "length", "tool_calls")
                              for c in choices):  # fmt: skip
            return  # an aborted or odd answer is not worth replaying
        raw = orjson.dumps(clean)
        size = len(raw) + len(key)
        if size > self._entries.maxsize:
            return
        while key not in self._entries and len(self._entries) >= self.max_entries:
            self._entries.popitem()  # the least recently used (none when replacing an entry)
        self._entries[key] = (raw, size)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return int(self._entries.currsize)


class StreamRecorder:
    """Puts a stream's chunks together into the completion a plain request would return."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: dict[str, Any]) -> None:
        if not self.head and chunk.get("id"):
            self.head = {k: chunk.get(k) for k in ("id", "created", "model")}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for piece in chunk.get("choices") or []:
            choice = self.choices.setdefault(
                piece.get("index", 0), {"content": [], "reasoning": [], "tools": {}, "finish": None}
            )
            delta = piece.get("delta") or {}
            if delta.get("content"):
                choice["content"].append(delta["content"])
            if delta.get("reasoning"):
                choice["reasoning"].append(delta["reasoning"])
            for call in delta.get("tool_calls") or []:
                empty = {"id": None, "name": "", "arguments": []}
                slot = choice["tools"].setdefault(call.get("index", 0), empty)
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"].append(fn.get("arguments") or "")
            if piece.get("finish_reason"):
                choice["finish"] = piece["finish_reason"]

    def completion(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self.choices):
            c = self.choices[index]
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(c["content"]) or None,
            }
            if c["reasoning"]:
                message["reasoning"] = "".join(c["reasoning"])
            if c["tools"]:
                message["tool_calls"] = [
                    {"id": t["id"], "type": "function",
                     "function": {"name": t["name"], "arguments": "".join(t["arguments"])}}
                    for _, t in sorted(c["tools"].items())
                ]  # fmt: skip
            choices.append({"index": index, "message": message, "logprobs": None,
                            "finish_reason": c["finish"]})  # fmt: skip
        return {**self.head, "object": "chat.completion", "choices": choices, "usage": self.usage}


def replay_chunks(completion: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A cached completion as stream chunks: per choice, its message in one delta, then its
    finish reason. (The usage chunk, when asked for, is the caller's to add.)"""
    head = {"id": completion.get("id"), "object": "chat.completion.chunk",
            "created": completion.get("created"), "model": completion.get("model")}  # fmt: skip
    for choice in completion.get("choices") or []:
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("reasoning"):
            delta["reasoning"] = message["reasoning"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call}
                                   for i, call in enumerate(message["tool_calls"])]  # fmt: skip
        index = choice.get("index", 0)
        yield {**head, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                    "finish_reason": None}]}  # fmt: skip
        yield {**head, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                    "finish_reason": choice.get("finish_reason")}]}  # fmt: skip
