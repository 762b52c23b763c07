"""The response cache: exact replays of deterministic requests, without the GPU.

A request is cacheable when its answer is fixed: ``temperature`` 0 or a ``seed`` set. Its
key is the SHA-256 of the normalized engine body (model, messages, tools, every sampling
parameter; not ``stream`` or ``stream_options``, so a streamed and a plain request share an
entry) and of the caller's key name, unless the cache is shared across keys
(``VLLM_CACHE_SHARED``). Entries are bounded in number and bytes and expire after a TTL
(cachetools' ``TTLCache``, least recently used first). Streams fill the cache too: their
chunks are put together into the completion a plain request would have had, and that entry
knows what it lacks: a stream carries no logprobs, prompt logprobs nor token ids (and not
always its ``stop_reason``), so a request asking for those misses it, and the plain answer it
then gets replaces the entry. A plain answer answers a stream too.

Every entry remembers the model (or adapter) it was asked of, the request's ``model``:
``drop_model`` forgets them all, as an adapter reloaded under the same name must. An answer
whose request was looked up before its model was forgotten is not stored.

``Cache-Control: no-cache`` skips the lookup (the fresh answer replaces the entry);
``no-store`` keeps the request away from the cache altogether.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from cachetools import TTLCache

__all__ = [
    "CacheLookup",
    "RecordedCompletion",
    "ResponseCache",
    "StreamRecorder",
    "canonical_json",
    "replay_chunks",
]

_NOT_IN_KEY = frozenset({"stream", "stream_options", "user"})

# What a request can ask for that a stream put together does not have: vLLM's plain answer
# carries them (choices' ``logprobs`` and ``token_ids``, the answer's ``prompt_logprobs`` and
# ``prompt_token_ids``); the recorder keeps none of them.
_NOT_IN_STREAMS = frozenset({"logprobs", "prompt_logprobs", "token_ids"})
_NOTHING: frozenset[str] = frozenset()


def canonical_json(obj: Any) -> bytes:
    """``obj`` as JSON with sorted keys. orjson, or, for what it refuses (integers past 64
    bits, lone surrogates: the engine judges those, so they reach here), the standard
    library's ASCII-escaped output."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return json.dumps(obj, sort_keys=True, default=str).encode()


def _needs(body: dict[str, Any]) -> frozenset[str]:
    """What of a full answer the request asks for, beyond its messages."""
    needs = set()
    if body.get("logprobs") or body.get("top_logprobs"):
        needs.add("logprobs")
    if body.get("prompt_logprobs") is not None:
        needs.add("prompt_logprobs")
    if body.get("return_token_ids"):
        needs.add("token_ids")
    if body.get("stop") or body.get("stop_token_ids"):
        needs.add("stop_reason")  # which stop string (or token) ended the answer
    return frozenset(needs) if needs else _NOTHING


class RecordedCompletion(dict[str, Any]):
    """A completion put together from a stream (``StreamRecorder.completion``): ``put`` files
    it as an entry that lacks what streams do not carry."""


class _Entry(NamedTuple):
    raw: bytes
    size: int
    lacks: frozenset[str]  # what a request may ask for that this answer does not have


class _LookedUp(str):
    """A key as ``lookup`` hands it out (to ``put``, with the answer): it also remembers the
    request's model and that model's generation then."""

    __slots__ = ("generation", "model")
    model: str | None
    generation: int


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
        self._entries: TTLCache[str, _Entry] = TTLCache(
            maxsize=max_bytes, ttl=ttl, timer=timer, getsizeof=lambda entry: entry.size
        )
        self.hits = self.misses = 0
        # The keys stored for each model (some maybe expired or evicted since: pruned now and
        # then), and how many times each model was dropped.
        self._by_model: dict[str | None, set[str]] = {}
        self._indexed = 0
        self._generations: dict[str, int] = {}

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
            if entry is not None and not (entry.lacks and entry.lacks & _needs(body)):
                self.hits += 1
                return CacheLookup(key, orjson.loads(entry.raw))
        self.misses += 1
        model = body.get("model")
        looked_up = _LookedUp(key)
        looked_up.model = model if isinstance(model, str) else None
        looked_up.generation = self._generations.get(looked_up.model or "", 0)
        return CacheLookup(looked_up, store=True)

    def put(self, key: str, completion: dict[str, Any], *, streamed: bool | None = None) -> None:
        """Store an answer under a key from ``lookup`` (or ``key_for``). ``streamed``: put
        together from a stream (default: whether it is a ``RecordedCompletion``)."""
        if streamed is None:
            streamed = isinstance(completion, RecordedCompletion)
        model = getattr(key, "model", None) or completion.get("model")
        if isinstance(key, _LookedUp) and key.generation != self._generations.get(
            key.model or "", 0
        ):
            return  # its model was dropped (an adapter reloaded) while this request ran
        key = str(key)
        clean = {k: v for k, v in completion.items() if k != "vllm_autoscale"}
        choices = clean.get("choices") or []
        if not choices or any(c.get("finish_reason") not in ("stop", "length", "tool_calls")
                              for c in choices):  # fmt: skip
            return  # an aborted or odd answer is not worth replaying
        lacks = _NOTHING
        if streamed:
            lacks = _NOT_IN_STREAMS
            if any("stop_reason" not in c for c in choices):
                lacks = lacks | {"stop_reason"}
        raw = orjson.dumps(clean)
        size = len(raw) + len(key)
        if size > self._entries.maxsize:
            return
        while key not in self._entries and len(self._entries) >= self.max_entries:
            self._entries.popitem()  # the least recently used (none when replacing an entry)
        self._entries[key] = _Entry(raw, size, lacks)
        self._index(model if isinstance(model, str) else None, key)

    def _index(self, model: str | None, key: str) -> None:
        keys = self._by_model.setdefault(model, set())
        if key not in keys:
            keys.add(key)
            self._indexed += 1
        if self._indexed > 2 * self.max_entries + 64:  # forget keys no longer stored
            for name in list(self._by_model):
                kept = {k for k in self._by_model[name] if k in self._entries}
                if kept:
                    self._by_model[name] = kept
                else:
                    del self._by_model[name]
            self._indexed = sum(len(keys) for keys in self._by_model.values())

    def drop_model(self, model: str) -> int:
        """Forget every answer of ``model`` (a model's or an adapter's name, as requests say
        it), and any answer of it still on its way; returns how many were stored."""
        self._generations[model] = self._generations.get(model, 0) + 1
        keys = self._by_model.pop(model, set())
        self._indexed -= len(keys)
        return sum(self._entries.pop(key, None) is not None for key in keys)

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
                empty: dict[str, Any] = {"id": None, "name": "", "arguments": []}
                slot = choice["tools"].setdefault(call.get("index", 0), empty)
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"].append(fn.get("arguments") or "")
            if piece.get("finish_reason"):
                choice["finish"] = piece["finish_reason"]
                if "stop_reason" in piece:  # vLLM's: the stop string or token that ended it
                    choice["stop_reason"] = piece["stop_reason"]

    def completion(self) -> RecordedCompletion:
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
            choice = {"index": index, "message": message, "logprobs": None,
                      "finish_reason": c["finish"]}  # fmt: skip
            if "stop_reason" in c:
                choice["stop_reason"] = c["stop_reason"]
            choices.append(choice)
        return RecordedCompletion(
            {**self.head, "object": "chat.completion", "choices": choices, "usage": self.usage}
        )


def replay_chunks(completion: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A cached completion as stream chunks: per choice, its message in one delta (with its
    logprobs and token ids, when it has them), then its finish (and stop) reason; the prompt's
    token ids, when it has them, on the first chunk, as vLLM sends them. (The usage chunk,
    when asked for, is the caller's to add.)"""
    head = {"id": completion.get("id"), "object": "chat.completion.chunk",
            "created": completion.get("created"), "model": completion.get("model")}  # fmt: skip
    prompt_ids = completion.get("prompt_token_ids")
    for choice in completion.get("choices") or []:
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("reasoning"):
            delta["reasoning"] = message["reasoning"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call}
                                   for i, call in enumerate(message["tool_calls"])]  # fmt: skip
        index = choice.get("index", 0)
        first: dict[str, Any] = {
            "index": index,
            "delta": delta,
            "logprobs": choice.get("logprobs"),
            "finish_reason": None,
        }
        if choice.get("token_ids") is not None:
            first["token_ids"] = choice["token_ids"]
        extra = {"prompt_token_ids": prompt_ids} if prompt_ids is not None else {}
        prompt_ids = None
        yield {**head, **extra, "choices": [first]}
        last: dict[str, Any] = {"index": index, "delta": {}, "logprobs": None,
                                "finish_reason": choice.get("finish_reason")}  # fmt: skip
        if "stop_reason" in choice:
            last["stop_reason"] = choice["stop_reason"]
        yield {**head, "choices": [last]}
