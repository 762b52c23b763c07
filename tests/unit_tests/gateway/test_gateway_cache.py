"""The response cache (``deploy/gateway/cache.py``): keys, bounds, directives, streams."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from deploy.gateway.cache import ResponseCache, StreamRecorder, replay_chunks

RECORDED: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "recorded_tool_streams.json").read_text(encoding="utf-8")
)
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


class Timer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def body(**over: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is 2 + 2?"}],
        "temperature": 0,
        "max_tokens": 16,
        **over,
    }


def completion(text: str = "4", finish: str | None = "stop", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        **extra,
    }


def cache(**kw: Any) -> ResponseCache:
    options: dict[str, Any] = {"max_entries": 100, "max_bytes": 1_000_000, "ttl": 60.0, **kw}
    return ResponseCache(**options)


def stored(c: ResponseCache, caller: str, b: dict[str, Any], text: str = "4") -> str:
    """Miss, then store an answer; returns its key."""
    miss = c.lookup(caller, b)
    assert miss.hit is None and miss.store and miss.key is not None
    c.put(miss.key, completion(text))
    return miss.key


def hit(c: ResponseCache, caller: str, b: dict[str, Any], cc: str = "") -> dict[str, Any] | None:
    return c.lookup(caller, b, cc).hit


# -- what is cacheable ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("over", "cacheable"),
    [
        ({}, True),
        ({"temperature": 0.0}, True),
        ({"temperature": 0.7}, False),
        ({"temperature": 0.7, "seed": 42}, True),
        ({"temperature": 1, "seed": 0}, True),
        ({"temperature": 1, "seed": None}, False),
    ],
)
def test_cacheable_rule(over: dict[str, Any], cacheable: bool) -> None:
    assert ResponseCache.cacheable(body(**over)) is cacheable


def test_request_without_temperature_or_seed_is_not_cacheable() -> None:
    plain = body()
    del plain["temperature"]
    assert not ResponseCache.cacheable(plain)
    lookup = cache().lookup("alice", plain)
    assert lookup.key is None and lookup.hit is None and not lookup.store


def test_not_cacheable_requests_never_hit_nor_count() -> None:
    c = cache()
    hot = body(temperature=0.9)
    assert c.lookup("alice", hot).key is None
    assert (c.hits, c.misses, len(c)) == (0, 0, 0)


# -- keys ----------------------------------------------------------------------------------------


def test_miss_then_hit_returns_the_stored_completion() -> None:
    c = cache()
    stored(c, "alice", body())
    answer = hit(c, "alice", body())
    assert answer == completion()
    assert (c.hits, c.misses) == (1, 1)


def test_hits_are_copies_the_caller_may_change() -> None:
    c = cache()
    stored(c, "alice", body())
    first = hit(c, "alice", body())
    assert first is not None
    first["choices"][0]["message"]["content"] = "changed"
    assert hit(c, "alice", body()) == completion()


@pytest.mark.parametrize(
    "over",
    [
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"user": "someone-else"},
    ],
)
def test_stream_stream_options_and_user_are_not_in_the_key(over: dict[str, Any]) -> None:
    c = cache()
    assert c.key_for("alice", body(**over)) == c.key_for("alice", body())
    stored(c, "alice", body())
    assert hit(c, "alice", body(**over)) is not None


@pytest.mark.parametrize(
    "over",
    [
        {"model": "other-model"},
        {"messages": [{"role": "user", "content": "What is 3 + 3?"}]},
        {"max_tokens": 17},
        {"seed": 1},
        {"top_p": 0.5},
        {"stop": ["\n"]},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"response_format": {"type": "json_object"}},
        {"n": 2},
        {"logprobs": True},
    ],
)
def test_other_parameters_are_in_the_key(over: dict[str, Any]) -> None:
    c = cache()
    assert c.key_for("alice", body(**over)) != c.key_for("alice", body())
    stored(c, "alice", body())
    assert hit(c, "alice", body(**over)) is None


def test_key_ignores_the_order_of_fields() -> None:
    c = cache()
    a = body(tools=[{"type": "function", "function": {"name": "f", "parameters": {"a": 1}}}])
    b = dict(reversed(list(copy.deepcopy(a).items())))
    b["tools"][0]["function"] = dict(reversed(list(b["tools"][0]["function"].items())))
    assert c.key_for("alice", a) == c.key_for("alice", b)


def test_entries_are_per_key_unless_shared() -> None:
    private = cache()
    stored(private, "alice", body())
    assert hit(private, "bob", body()) is None
    assert hit(private, "alice", body()) is not None
    shared = cache(shared=True)
    stored(shared, "alice", body())
    assert hit(shared, "bob", body()) == completion()
    assert shared.key_for("alice", body()) == shared.key_for("bob", body())


# -- what is stored ------------------------------------------------------------------------------


@pytest.mark.parametrize("finish", ["stop", "length", "tool_calls"])
def test_finished_answers_are_stored(finish: str) -> None:
    c = cache()
    key = c.key_for("alice", body())
    c.put(key, completion(finish=finish))
    assert hit(c, "alice", body()) is not None


@pytest.mark.parametrize("finish", [None, "abort", "error"])
def test_aborted_or_odd_answers_are_not_stored(finish: str | None) -> None:
    c = cache()
    c.put(c.key_for("alice", body()), completion(finish=finish))
    assert len(c) == 0 and hit(c, "alice", body()) is None


def test_an_answer_with_any_unfinished_choice_is_not_stored() -> None:
    c = cache()
    answer = completion()
    answer["choices"].append({**answer["choices"][0], "index": 1, "finish_reason": None})
    c.put(c.key_for("alice", body()), answer)
    c.put(c.key_for("alice", body(seed=1)), {**completion(), "choices": []})
    assert len(c) == 0


def test_the_wrappers_own_metadata_is_not_stored() -> None:
    c = cache()
    key = c.key_for("alice", body())
    c.put(key, completion(vllm_autoscale={"cost": {"usd": 0.001}, "cold_start": True}))
    answer = hit(c, "alice", body())
    assert answer is not None and "vllm_autoscale" not in answer


# -- Cache-Control -------------------------------------------------------------------------------


def test_no_cache_skips_the_lookup_but_stores_the_fresh_answer() -> None:
    c = cache()
    stored(c, "alice", body(), text="old")
    fresh = c.lookup("alice", body(), "no-cache")
    assert fresh.hit is None and fresh.store and fresh.key is not None
    c.put(fresh.key, completion("new"))
    answer = hit(c, "alice", body())
    assert answer is not None and answer["choices"][0]["message"]["content"] == "new"
    assert len(c) == 1


def test_no_store_bypasses_the_cache() -> None:
    c = cache()
    stored(c, "alice", body())
    for header in ("no-store", "No-Store", "max-age=0, no-store"):
        lookup = c.lookup("alice", body(), header)
        assert lookup.key is None and lookup.hit is None and not lookup.store
    assert (c.hits, c.misses) == (0, 1)


def test_other_cache_control_directives_still_hit() -> None:
    c = cache()
    stored(c, "alice", body())
    assert hit(c, "alice", body(), "max-age=60") is not None
    assert hit(c, "alice", body(), " NO-CACHE , private") is None


# -- bounds --------------------------------------------------------------------------------------


def test_entries_expire_after_the_ttl() -> None:
    timer = Timer()
    c = cache(ttl=30.0, timer=timer)
    stored(c, "alice", body())
    timer.now += 29
    assert hit(c, "alice", body()) is not None
    timer.now += 2
    assert hit(c, "alice", body()) is None


def test_entry_bound_evicts_the_least_recently_used() -> None:
    c = cache(max_entries=2)
    a, b, d = body(seed=1), body(seed=2), body(seed=3)
    stored(c, "alice", a)
    stored(c, "alice", b)
    assert hit(c, "alice", a) is not None  # b is now the least recently used
    stored(c, "alice", d)
    assert len(c) == 2
    assert hit(c, "alice", b) is None
    assert hit(c, "alice", a) is not None and hit(c, "alice", d) is not None


def test_replacing_an_entry_in_a_full_cache_evicts_nothing_else() -> None:
    c = cache(max_entries=2)
    a, b = body(seed=1), body(seed=2)
    stored(c, "alice", a)
    stored(c, "alice", b)
    fresh = c.lookup("alice", b, "no-cache")
    assert fresh.key is not None
    c.put(fresh.key, completion("newer"))
    assert len(c) == 2
    assert hit(c, "alice", a) is not None


def test_byte_bound_evicts_the_least_recently_used() -> None:
    raw = json.dumps(completion("x" * 200), separators=(",", ":")).encode()
    limit = int((len(raw) + 64) * 2.5)  # room for two entries (answer and 64-digit key)
    c = cache(max_bytes=limit)
    a, b, d = body(seed=1), body(seed=2), body(seed=3)
    for request in (a, b):
        c.put(c.key_for("alice", request), completion("x" * 200))
    assert len(c) == 2 and c.bytes <= limit
    assert hit(c, "alice", a) is not None  # b is now the least recently used
    c.put(c.key_for("alice", d), completion("x" * 200))
    assert hit(c, "alice", b) is None
    assert hit(c, "alice", a) is not None and hit(c, "alice", d) is not None
    assert len(c) == 2 and c.bytes <= limit


def test_an_answer_larger_than_the_whole_cache_is_not_stored() -> None:
    c = cache(max_bytes=500)
    stored(c, "alice", body(seed=1), text="small")
    c.put(c.key_for("alice", body(seed=2)), completion("x" * 1000))
    assert len(c) == 1 and hit(c, "alice", body(seed=1)) is not None


def test_bytes_counts_what_is_stored() -> None:
    short, long = cache(), cache()
    assert short.bytes == 0
    stored(short, "alice", body(), text="4")
    stored(long, "alice", body(), text="4" + "y" * 500)
    assert short.bytes > 64  # the key is counted too
    assert long.bytes - short.bytes >= 500


# -- streams -------------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    return {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1700000001,
        "model": MODEL,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(prompt: int, completion_tokens: int) -> dict[str, Any]:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion_tokens}
    return {**chunk({}), "choices": [], "usage": usage}


def recorded(*chunks: dict[str, Any]) -> dict[str, Any]:
    recorder = StreamRecorder()
    for c in chunks:
        recorder.feed(copy.deepcopy(c))
    return recorder.completion()


def test_recorder_puts_content_pieces_together() -> None:
    result = recorded(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({"content": None}),
        chunk({}, finish="stop"),
        usage_chunk(5, 2),
    )
    assert result["id"] == "chatcmpl-s" and result["model"] == MODEL
    assert result["created"] == 1700000001 and result["object"] == "chat.completion"
    (choice,) = result["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Hello"}
    assert choice["finish_reason"] == "stop"
    assert result["usage"] == {"prompt_tokens": 5, "completion_tokens": 2}


def test_recorder_keeps_reasoning_apart_from_content() -> None:
    result = recorded(
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning": "The user "}),
        chunk({"reasoning": "wants a sum."}),
        chunk({"content": "4"}),
        chunk({}, finish="stop"),
    )
    message = result["choices"][0]["message"]
    assert message["reasoning"] == "The user wants a sum." and message["content"] == "4"


def test_recorder_assembles_a_recorded_vllm_tool_call_stream() -> None:
    case = RECORDED["single_call"]
    result = recorded(*case["stream"])
    (choice,) = result["choices"]
    assert choice["finish_reason"] == case["whole"]["finish_reason"]
    assert choice["message"]["content"] is None
    calls = [
        {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in choice["message"]["tool_calls"]
    ]
    assert calls == case["whole"]["tool_calls"]
    first_call = case["stream"][1]["choices"][0]["delta"]["tool_calls"][0]
    assert choice["message"]["tool_calls"][0]["id"] == first_call["id"]
    assert choice["message"]["tool_calls"][0]["type"] == "function"
    assert result["usage"] == case["stream"][-1]["usage"]
    assert result["id"] == case["stream"][0]["id"]


def test_recorder_keeps_a_cut_recorded_stream_unfinished_arguments() -> None:
    stream = RECORDED["cut_by_max_tokens"]["stream"]
    result = recorded(*stream)
    (choice,) = result["choices"]
    assert choice["finish_reason"] == "length"
    pieces = [
        call["function"].get("arguments", "")
        for c in stream
        for p in c["choices"]
        for call in p["delta"].get("tool_calls") or []
    ]
    assert choice["message"]["tool_calls"][0]["function"] == {
        "name": "send_email",
        "arguments": "".join(pieces),
    }


def test_recorder_keeps_parallel_tool_calls_and_choices_apart() -> None:
    def call(i: int, **fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": i, **fields}]}

    result = recorded(
        chunk({"role": "assistant", "content": ""}),
        chunk(call(0, id="call-a", type="function", function={"name": "get_", "arguments": ""})),
        chunk(call(0, function={"name": "weather"})),
        chunk(call(1, id="call-b", type="function", function={"name": "get_time"})),
        chunk(call(0, function={"arguments": '{"city": '})),
        chunk(call(1, function={"arguments": '{"tz": "UTC"}'})),
        chunk(call(0, function={"arguments": '"Paris"}'})),
        chunk({"content": "other choice"}, index=1),
        chunk({}, finish="tool_calls"),
        chunk({}, finish="stop", index=1),
    )
    first, second = result["choices"]
    assert [c["index"] for c in result["choices"]] == [0, 1]
    calls = first["message"]["tool_calls"]
    assert [(c["id"], c["function"]["name"]) for c in calls] == [
        ("call-a", "get_weather"),
        ("call-b", "get_time"),
    ]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert json.loads(calls[1]["function"]["arguments"]) == {"tz": "UTC"}
    assert first["finish_reason"] == "tool_calls"
    assert second["message"]["content"] == "other choice" and second["finish_reason"] == "stop"


def test_an_aborted_stream_records_no_finish_and_is_not_stored() -> None:
    result = recorded(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hal"}))
    assert result["choices"][0]["finish_reason"] is None
    c = cache()
    c.put(c.key_for("alice", body()), result)
    assert len(c) == 0


def test_a_recorded_stream_fills_the_cache_for_a_plain_request() -> None:
    c = cache()
    streamed = c.lookup("alice", body(stream=True, stream_options={"include_usage": True}))
    assert streamed.key is not None
    c.put(streamed.key, recorded(*RECORDED["single_call"]["stream"]))
    answer = hit(c, "alice", body())
    assert answer is not None and answer["choices"][0]["finish_reason"] == "tool_calls"


# -- replays -------------------------------------------------------------------------------------


def round_trip(answer: dict[str, Any]) -> dict[str, Any]:
    return recorded(*replay_chunks(answer))


def test_replay_of_a_text_completion_gives_the_same_message() -> None:
    answer = completion("The answer is 4.")
    again = round_trip(answer)
    assert again["choices"] == answer["choices"]
    assert {k: again[k] for k in ("id", "created", "model")} == {
        k: answer[k] for k in ("id", "created", "model")
    }


def test_replay_chunks_are_stream_chunks_ending_with_the_finish_reason() -> None:
    chunks = list(replay_chunks(completion("hi", finish="length")))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["content"] == "hi"
    assert chunks[0]["choices"][0]["finish_reason"] is None
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert not any("usage" in c for c in chunks)


def test_replay_of_a_recorded_tool_call_stream_gives_the_same_message() -> None:
    first = recorded(*RECORDED["single_call"]["stream"])
    again = round_trip(first)
    assert again["choices"] == first["choices"]
    assert again["choices"][0]["message"]["tool_calls"]


def test_replay_of_reasoning_and_several_choices_gives_the_same_messages() -> None:
    answer = completion("4")
    answer["choices"][0]["message"]["reasoning"] = "Two plus two."
    answer["choices"].append(
        {
            "index": 1,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "[]"}},
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    )
    assert round_trip(answer)["choices"] == answer["choices"]


def test_a_cached_answer_replays_through_the_cache() -> None:
    c = cache()
    c.put(c.key_for("alice", body()), recorded(*RECORDED["single_call"]["stream"]))
    answer = hit(c, "alice", body(stream=True))
    assert answer is not None
    assert round_trip(answer)["choices"] == answer["choices"]


# -- what an entry can answer --------------------------------------------------------------------

STREAMED = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "4"}),
    chunk({}, finish="stop"),
    usage_chunk(10, 1),
]
LOGPROBS = {
    "content": [{"token": "4", "logprob": -0.01, "bytes": [52], "top_logprobs": []}],
}


def plain_with_everything() -> dict[str, Any]:
    """A plain vLLM answer to a request that asked for logprobs and token ids."""
    answer = completion("4", prompt_logprobs=[None, {"1": {"logprob": -1.0}}],
                        prompt_token_ids=[1, 2, 3])  # fmt: skip
    answer["choices"][0].update(logprobs=LOGPROBS, stop_reason=None, token_ids=[19])
    return answer


@pytest.mark.parametrize(
    "over",
    [
        {"logprobs": True},
        {"logprobs": True, "top_logprobs": 2},
        {"prompt_logprobs": 0},
        {"return_token_ids": True},
    ],
)
def test_a_stream_filled_entry_does_not_answer_what_a_stream_never_carried(
    over: dict[str, Any],
) -> None:
    """A stream put together has no logprobs, prompt logprobs nor token ids: a request that
    asks for them misses (plain or streamed: a replay could not carry them either), and the
    plain answer then replaces the entry."""
    c = cache()
    streamed = c.lookup("alice", body(stream=True, **over))
    assert streamed.key is not None
    c.put(streamed.key, recorded(*STREAMED))
    assert len(c) == 1
    for request in (body(**over), body(stream=True, **over)):
        again = c.lookup("alice", request)
        assert again.hit is None and again.store and again.key == streamed.key
    c.put(streamed.key, plain_with_everything())
    answer = hit(c, "alice", body(**over))
    assert answer == plain_with_everything()
    assert hit(c, "alice", body(stream=True, **over)) == plain_with_everything()


def test_a_stream_filled_entry_answers_a_request_that_asks_nothing_more() -> None:
    c = cache()
    key = c.lookup("alice", body(stream=True, logprobs=False, top_logprobs=None)).key
    assert key is not None
    c.put(key, recorded(*STREAMED))
    answer = hit(c, "alice", body(logprobs=False, top_logprobs=None))
    assert answer is not None and answer["choices"][0]["message"]["content"] == "4"


def test_the_recorder_keeps_vllm_s_stop_reason() -> None:
    """vLLM's last chunk of a choice carries ``stop_reason`` (the stop string or token that
    ended it): the plain answer has it too."""
    stopped = chunk({}, finish="stop")
    stopped["choices"][0]["stop_reason"] = "\n\n"
    result = recorded(chunk({"content": "4"}), stopped)
    assert result["choices"][0]["stop_reason"] == "\n\n"
    assert recorded(*RECORDED["single_call"]["stream"])["choices"][0]["stop_reason"] is None


def test_a_stream_without_stop_reason_does_not_answer_a_request_with_stop_conditions() -> None:
    """Which stop string (or token) ended the answer is in ``stop_reason``: a stream that did
    not carry it cannot answer a request with ``stop`` or ``stop_token_ids``."""
    c = cache()
    for over in ({"stop": ["\n"]}, {"stop_token_ids": [2]}):
        key = c.lookup("alice", body(stream=True, **over)).key
        assert key is not None
        c.put(key, recorded(*STREAMED))  # STREAMED has no stop_reason
        assert hit(c, "alice", body(**over)) is None
        with_reason = recorded(*RECORDED["single_call"]["stream"])
        c.put(key, with_reason)
        assert hit(c, "alice", body(**over)) is not None


def test_a_plain_answer_replays_its_logprobs_and_token_ids_in_a_stream() -> None:
    answer = plain_with_everything()
    chunks = list(replay_chunks(answer))
    first, last = chunks[0], chunks[-1]
    assert first["choices"][0]["logprobs"] == LOGPROBS
    assert first["choices"][0]["token_ids"] == [19]
    assert first["prompt_token_ids"] == [1, 2, 3]
    assert last["choices"][0]["stop_reason"] is None and last["choices"][0]["logprobs"] is None
    assert all("prompt_token_ids" not in c for c in chunks[1:])


# -- forgetting a model --------------------------------------------------------------------------


def test_drop_model_forgets_every_entry_of_that_model_and_only_those() -> None:
    c = cache()
    for caller in ("alice", "bob"):
        stored(c, caller, body(model="tuned"))
        stored(c, caller, body(model="tuned", seed=7))
        stored(c, caller, body())
    before = c.bytes
    assert c.drop_model("tuned") == 4
    assert len(c) == 2 and 0 < c.bytes < before / 2
    assert hit(c, "alice", body(model="tuned")) is None
    assert hit(c, "bob", body(model="tuned", seed=7)) is None
    assert hit(c, "alice", body()) is not None and hit(c, "bob", body()) is not None
    assert c.drop_model("nothing-cached") == 0


def test_an_answer_in_flight_when_its_model_is_dropped_is_not_stored() -> None:
    """Looked up before the adapter was reloaded, answered by its old weights after: that
    answer must not fill the cache of the new one."""
    c = cache()
    plain = c.lookup("alice", body(model="tuned"))
    streamed = c.lookup("alice", body(model="tuned", seed=3, stream=True))
    other = c.lookup("alice", body())
    c.drop_model("tuned")
    assert plain.key and streamed.key and other.key
    c.put(plain.key, completion())
    c.put(streamed.key, recorded(*STREAMED))
    c.put(other.key, completion())
    assert len(c) == 1 and hit(c, "alice", body()) is not None
    again = c.lookup("alice", body(model="tuned"))  # after the reload: stored again
    assert again.key == plain.key
    assert again.key is not None
    c.put(again.key, completion("new weights"))
    answer = hit(c, "alice", body(model="tuned"))
    assert answer is not None and answer["choices"][0]["message"]["content"] == "new weights"


def test_an_entry_put_without_a_lookup_belongs_to_its_answer_s_model() -> None:
    c = cache()
    c.put(c.key_for("alice", body()), completion())
    assert c.drop_model(MODEL) == 1 and len(c) == 0


def test_the_model_index_stays_bounded_as_entries_come_and_go() -> None:
    c = cache(max_entries=2)
    for seed in range(200):
        stored(c, "alice", body(seed=seed, model=f"m{seed % 3}"))
    assert len(c) == 2 and c._indexed <= 2 * 2 + 64 + 1
    assert c.drop_model("m1") + c.drop_model("m0") + c.drop_model("m2") == 2 and len(c) == 0
