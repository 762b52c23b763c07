"""The gateway on the live stack (real vLLM on CPU) as a hostile caller and an auditor would
try it: a restarted wrapper whose keys were made at run time refuses every unauthenticated
call from the first moment its port answers; streams the client drops after their first
chunk are booked with their tokens; concurrent requests on a budget smaller than one
request are held to it. Each test serves its own wrapper over the session's engine."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
from pydantic import SecretStr

from deploy.gateway.store import SQLiteStore
from deploy.settings.settings import Settings
from deploy.wrapper import create_app
from tests.integration_tests.conftest import serve_on_stack

CHAT = "/v1/chat/completions"
ALICE = "alice-key-" + "a" * 32


def _app(stack: Any, state: Path, **settings: Any) -> Any:
    config = Settings(**({"wrapper_api_key": None} | settings))
    return create_app(stack.transport, config, store=SQLiteStore(state))


def _close(stack: Any, app: Any) -> None:
    """The test's wrapper stops its sync and flushes (served without lifespan)."""
    asyncio.run_coroutine_threadsafe(app.state.gateway.aclose(), stack.loop).result(30)


def _ask(content: str, max_tokens: int = 3, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}


def _keyed_routes(app: Any) -> list[tuple[str, str]]:
    """Every route of the app but / and /health, with a method (path parameters filled)."""
    routes = [("GET", "/openapi.json"), ("GET", "/docs")]
    for path, operations in app.openapi()["paths"].items():
        if path in ("/", "/health"):
            continue
        for method in operations:
            routes.append((method.upper(), path.replace("{name}", "someone")))
    return routes


def test_a_restarted_wrapper_refuses_unauthenticated_calls_from_its_first_moment(
    warm_stack: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    first = _app(warm_stack, state)
    with serve_on_stack(warm_stack, first) as url:
        made = httpx.post(url + "/v1/keys", json={"name": "ops", "role": "admin"}, timeout=30)
    _close(warm_stack, first)
    assert made.status_code == 201, made.text
    ops = {"authorization": f"Bearer {made.json()['key']}"}

    restarted = _app(warm_stack, state)
    routes = _keyed_routes(restarted)
    assert len(routes) >= 15  # inference, batch, seed, models, status, keys, usage, adapters...
    # A prober knocks from before the port is open: the first answers it gets are the ones
    # that count (no sync has run yet).
    probed: list[int] = []
    stop = threading.Event()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"

    def probe() -> None:
        while not stop.is_set() and len(probed) < 20:
            try:
                probed.append(httpx.get(url + "/v1/keys", timeout=5).status_code)
            except httpx.TransportError:  # not listening yet
                time.sleep(0.001)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with serve_on_stack(warm_stack, restarted, port=port):
            prober.join(30)
            answers = {
                (method, path): httpx.request(method, url + path, json={}, timeout=30)
                for method, path in routes
            }
            with_key = httpx.get(url + "/v1/keys", headers=ops, timeout=30)
            open_routes = [httpx.get(url + p, timeout=30).status_code for p in ("/", "/health")]
    finally:
        stop.set()
        _close(warm_stack, restarted)
    assert probed and set(probed) == {401}, probed
    wrong = {route: r.status_code for route, r in answers.items() if r.status_code != 401}
    assert not wrong, wrong
    assert with_key.status_code == 200 and [k["name"] for k in with_key.json()["data"]] == ["ops"]
    assert open_routes == [200, 200]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_streams_dropped_after_their_first_chunk_are_booked_with_their_tokens(
    warm_stack: Any, tmp_path: Path
) -> None:
    keys = SecretStr(json.dumps([{"name": "alice", "key": ALICE}]))
    app = _app(warm_stack, tmp_path / "state.db", api_keys=keys)
    firsts: list[str] = []
    try:
        with serve_on_stack(warm_stack, app) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key=ALICE, max_retries=0)
            for i in range(8):
                stream = client.chat.completions.create(
                    model=warm_stack.transport.model_name, stream=True, max_tokens=48,
                    messages=[{"role": "user", "content": f"Tell a long story about ship {i}."}],
                )  # fmt: skip
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        firsts.append(chunk.choices[0].delta.content)
                        break
                stream.close()  # the client goes away after its first chunk
            usage: dict[str, Any] = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                usage = httpx.get(url + "/v1/usage", headers={"authorization": f"Bearer {ALICE}"},
                                  timeout=30).json()["totals"]  # fmt: skip
                if usage["requests"] == 8:
                    break
                time.sleep(0.2)
    finally:
        _close(warm_stack, app)
    assert len(firsts) == 8
    assert usage["requests"] == 8, usage
    # Each stream produced its first token at least; its prompt is counted too.
    assert usage["completion_tokens"] >= 8 and usage["prompt_tokens"] >= 8 * 10, usage
    assert usage["cost_usd"] > 0 and usage["gpu_seconds"] > 0


def test_concurrent_requests_on_a_budget_smaller_than_one_request_are_held_to_it(
    warm_stack: Any, tmp_path: Path
) -> None:
    keys = SecretStr(json.dumps([{"name": "alice", "key": ALICE, "monthly_budget_usd": 1e-7}]))
    app = _app(warm_stack, tmp_path / "state.db", api_keys=keys)
    headers = {"authorization": f"Bearer {ALICE}"}
    try:
        with serve_on_stack(warm_stack, app) as url:
            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(
                    lambda i: httpx.post(url + CHAT, json=_ask(f"Count to {i}.", 8),
                                         headers=headers, timeout=120),
                    range(16),
                ))  # fmt: skip
            usage = httpx.get(url + "/v1/usage", headers=headers, timeout=30).json()["totals"]
    finally:
        _close(warm_stack, app)
    served = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert 1 <= len(served) <= 2 and len(served) + len(refused) == 16
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in refused)
    assert usage["requests"] == len(served)
