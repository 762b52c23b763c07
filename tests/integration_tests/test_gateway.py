"""The gateway on the live stack: per-key limits refuse before the GPU is touched, a budget
stops a key, the cache never answers one key with another's, and the ledger adds up to the
responses' usage across a wrapper restart. Each test serves its own gateway wrapper over the
session's engine, with its ledger in a SQLite file."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from deploy.gateway.store import SQLiteStore
from deploy.settings.settings import Settings
from deploy.wrapper import create_app
from langchain_vllm_autoscale import ChatVLLMAutoscale, RateLimitError
from tests.integration_tests.conftest import API_KEY, serve_on_stack

CHAT = "/v1/chat/completions"
ADMIN = {"authorization": f"Bearer {API_KEY}"}


def _keys(**entries: dict[str, Any]) -> dict[str, str]:
    return {name: f"{name}-key-" + "k" * 32 for name in entries}


def gateway_app(stack, state: Path, entries: dict[str, dict[str, Any]], **settings: Any):
    """A gateway wrapper over the session's engine; ``entries``: key name -> its limits."""
    tokens = _keys(**entries)
    keys = [{"name": n, "key": tokens[n], **limits} for n, limits in entries.items()]
    config = Settings(
        wrapper_api_key=SecretStr(API_KEY), api_keys=SecretStr(json.dumps(keys)), **settings
    )
    app = create_app(stack.transport, config, store=SQLiteStore(state))
    return app, {n: {"authorization": f"Bearer {t}"} for n, t in tokens.items()}


def ask(content: str, max_tokens: int = 3, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}


def engine(url: str) -> dict[str, Any]:
    return httpx.get(url + "/status", headers=ADMIN, timeout=30).json()


def test_over_rpm_or_tpm_a_key_gets_429_and_the_cold_gpu_stays_cold(warm_stack, tmp_path) -> None:
    app, auth = gateway_app(
        warm_stack, tmp_path / "state.db", {"tight": {"rpm": 2}, "thin": {"tpm": 300}}
    )
    with serve_on_stack(warm_stack, app) as url, httpx.Client(base_url=url, timeout=120) as http:
        cached = ask("Say yes.", temperature=0)
        assert http.post(CHAT, json=cached, headers=auth["tight"]).status_code == 200
        assert http.post(CHAT, json=ask("Hi"), headers=auth["tight"]).status_code == 200
        assert http.post(CHAT, json=ask("Hi", 5), headers=auth["thin"]).status_code == 200

        warm_stack.call(warm_stack.transport.scale_down)
        before = engine(url)
        assert before["state"] == "cold"
        refused = [http.post(CHAT, json=ask("Hi"), headers=auth["tight"]) for _ in range(3)]
        # The first request's usage is settled; 290 more tokens do not fit in 300.
        refused.append(http.post(CHAT, json=ask("Hi", 290), headers=auth["thin"]))
        # A cache hit is no GPU work: it is answered, rate limit or not, engine cold.
        hit = http.post(CHAT, json=cached, headers=auth["tight"])
        after = engine(url)

    for response, limit in zip(refused, ["rpm", "rpm", "rpm", "tpm"], strict=True):
        assert response.status_code == 429, response.text
        assert response.json()["error"]["type"] == limit
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(response.headers["retry-after"]) <= 60
    assert hit.status_code == 200 and hit.headers["x-cache"] == "hit"
    assert after["state"] == "cold" and after["cold_starts"] == before["cold_starts"]
    assert after["queue_depth"] == 0


def test_a_budget_stops_a_key_at_its_cap(warm_stack, tmp_path) -> None:
    # One request's share of the GPU at $2.50/h is far above a millionth of a dollar.
    app, auth = gateway_app(
        warm_stack, tmp_path / "state.db", {"capped": {"monthly_budget_usd": 1e-6}}
    )
    with serve_on_stack(warm_stack, app) as url:
        model = ChatVLLMAutoscale(
            base_url=url, api_key=auth["capped"]["authorization"].split()[1], max_tokens=3
        )
        first = model.invoke("Say ok.")
        with pytest.raises(RateLimitError) as refused:
            model.invoke("Say ok.")  # at once: no retries into next month
        usage = httpx.get(url + "/v1/usage", headers=auth["capped"]).json()
    assert first.response_metadata["service"]["cost"]["usd"] > 1e-6
    assert refused.value.status_code == 429 and "monthly budget" in refused.value.message
    assert usage["totals"]["requests"] == 1 and usage["totals"]["cost_usd"] >= 1e-6


def test_the_cache_never_answers_one_key_with_anothers(warm_stack, tmp_path) -> None:
    app, auth = gateway_app(warm_stack, tmp_path / "state.db", {"ann": {}, "ben": {}})
    prompts = [ask(f"Name a colour ({i}).", 4, temperature=0) for i in range(5)]
    seen: Counter[tuple[str, str]] = Counter()
    with serve_on_stack(warm_stack, app) as url, httpx.Client(base_url=url, timeout=120) as http:
        for who in ("ann", "ben", "ann", "ben"):
            for body in prompts:
                response = http.post(CHAT, json=body, headers=auth[who])
                assert response.status_code == 200
                seen[(who, response.headers["x-cache"])] += 1
        # The model's own metadata says a replay is one.
        model = ChatVLLMAutoscale(
            base_url=url, api_key=auth["ann"]["authorization"].split()[1], temperature=0,
            max_tokens=4,
        )  # fmt: skip
        model.invoke("Name a fruit.")
        again = model.invoke("Name a fruit.")
    # Each key misses once per prompt and then hits: never a hit on the other key's entry.
    assert seen == {("ann", "miss"): 5, ("ben", "miss"): 5, ("ann", "hit"): 5, ("ben", "hit"): 5}
    assert again.response_metadata["service"]["cache"] == "hit"


async def _mixed(url: str, auth: dict[str, dict[str, str]], n: int, seed: int) -> list[dict]:
    """``n`` requests of every kind, 12 at a time; each answer's usage, cache state and key."""
    rng = random.Random(seed)
    names = sorted(auth)
    limit = asyncio.Semaphore(12)

    async def one(http: httpx.AsyncClient, i: int) -> list[dict]:
        who = rng.choice(names)
        kind = rng.choice(["chat", "chat", "repeat", "stream", "repeat-stream", "seed", "batch"])
        headers = auth[who]
        async with limit:
            if kind in ("repeat", "repeat-stream"):  # deterministic: hits after the first
                body = ask(f"Count to {i % 4}.", 3, temperature=0)
            else:
                body = ask(f"Say {i}.", 3)
            if kind.endswith("stream"):
                body |= {"stream": True, "stream_options": {"include_usage": True}}
                r = await http.post(CHAT, json=body, headers=headers)
                r.raise_for_status()
                events = [json.loads(line[6:]) for line in r.text.splitlines()
                          if line.startswith("data: {")]  # fmt: skip
                usage = next(e["usage"] for e in events if e.get("usage"))
                return [{"key": who, "usage": usage, "cache": r.headers["x-cache"]}]
            if kind == "seed":
                r = await http.post("/chat", json=body, headers=headers)
                r.raise_for_status()
                return [{"key": who, "usage": r.json()["usage"], "cache": r.headers["x-cache"]}]
            if kind == "batch":
                r = await http.post(CHAT + "/batch", json={"requests": [body, body]},
                                    headers=headers)  # fmt: skip
                r.raise_for_status()
                return [{"key": who, "usage": item["response"]["usage"], "cache": "bypass"}
                        for item in r.json()["results"]]  # fmt: skip
            r = await http.post(CHAT, json=body, headers=headers)
            r.raise_for_status()
            return [{"key": who, "usage": r.json()["usage"], "cache": r.headers["x-cache"]}]

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        results = await asyncio.gather(*(one(http, i) for i in range(n)))
    return [answer for group in results for answer in group]


def test_the_ledger_adds_up_to_the_responses_across_a_wrapper_restart(warm_stack, tmp_path):
    """1,000 requests of every kind from three keys; the wrapper is stopped (as a shutdown
    does: its last ledger rows written) and a new one started on the same state halfway."""
    state = tmp_path / "state.db"
    entries: dict[str, dict[str, Any]] = {"k1": {}, "k2": {}, "k3": {}}
    answers: list[dict] = []
    for half in range(2):
        app, auth = gateway_app(warm_stack, state, entries)
        with serve_on_stack(warm_stack, app) as url:
            answers += asyncio.run(_mixed(url, auth, 500, seed=half))
        warm_stack.call(app.state.gateway.aclose)  # what the wrapper's shutdown does
    app, auth = gateway_app(warm_stack, state, entries)
    with serve_on_stack(warm_stack, app) as url:
        ledger = httpx.get(url + "/v1/usage", headers=ADMIN, timeout=30).json()

    assert len(answers) >= 1000
    hits = [a for a in answers if a["cache"] == "hit"]
    served = [a for a in answers if a["cache"] != "hit"]
    assert hits and served
    expected = {
        "requests": len(served),
        "prompt_tokens": sum(a["usage"]["prompt_tokens"] for a in served),
        "completion_tokens": sum(a["usage"]["completion_tokens"] for a in served),
        "cache_hits": len(hits),
        "cached_tokens": sum(a["usage"]["total_tokens"] for a in hits),
    }
    assert {k: ledger["totals"][k] for k in expected} == expected
    per_key = Counter(a["key"] for a in served)
    rows = Counter()
    for row in ledger["data"]:
        rows[row["key"]] += row["requests"]
    assert rows == per_key
