"""The wrapper as a service, on the live stack: engine state without waking it, the local
engine's scale-to-zero life, cold-start queueing and heartbeats, input limits, faults,
client disconnects, metrics, logs and a bounded load run."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import time
from collections import Counter

import httpx
import pytest

from tests.integration_tests.conftest import API_KEY

AUTH = {"authorization": f"Bearer {API_KEY}"}
SHORT = {"messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 3}


def _status(stack) -> dict:
    return httpx.get(stack.url + "/status", headers=AUTH).json()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_status_reports_engine(warm_stack, http) -> None:
    http.post("/v1/chat/completions", json=SHORT).raise_for_status()
    status = _status(warm_stack)
    assert status["state"] == "warm"
    for key in ("queue_depth", "in_flight", "cold_starts", "scaledown_window", "last_request_at"):
        assert key in status
    assert status["cold_starts"] >= 1 and time.time() - status["last_request_at"] < 60


def test_idle_engine_scales_to_zero_and_info_routes_never_wake_it(warm_stack, http) -> None:
    transport = warm_stack.transport
    pid = transport.engine.pid
    transport.scaledown_window = 2.0
    try:
        warm_stack.call(_ensure_idle_watch(transport))
        _wait_for(lambda: _status(warm_stack)["state"] == "cold", 30, "the idle engine to stop")
    finally:
        transport.scaledown_window = None
    _wait_for(lambda: not _alive(pid), 30, "the engine process to exit")
    starts = _status(warm_stack)["cold_starts"]
    for path in ("/", "/health", "/status", "/v1/models", "/metrics"):
        assert http.get(path).status_code == 200
    time.sleep(1)
    status = _status(warm_stack)
    assert status["state"] == "cold" and status["cold_starts"] == starts
    assert httpx.get(warm_stack.url + "/health").json()["engine_state"] == "cold"


# Here, after the test that leaves the engine cold: the start its request begins is cut short
# by the next test's scale-down, instead of being waited for (~30 s) by a test that needs it
# warm and then stopped again.
def test_queue_timeout_answers_503(stack) -> None:
    transport = stack.transport
    stack.call(transport.scale_down)
    transport.queue_timeout = 0.5
    try:
        resp = httpx.post(stack.url + "/v1/chat/completions", json=SHORT, headers=AUTH)
    finally:
        transport.queue_timeout = stack.settings.queue_timeout
    assert resp.status_code == 503 and "retry-after" in resp.headers
    assert "still starting" in resp.json()["error"]["message"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _ensure_idle_watch(transport):
    async def run() -> None:
        transport._ensure_idle_watch()

    return run


async def _stream_lines(client: httpx.AsyncClient, body: dict) -> list[str]:
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        return [line async for line in resp.aiter_lines() if line]


def test_64_concurrent_requests_while_cold_all_succeed(stack, http) -> None:
    stack.call(stack.transport.scale_down)
    starts = _status(stack)["cold_starts"]

    async def burst() -> tuple[list[httpx.Response], list[str]]:
        async with httpx.AsyncClient(base_url=stack.url, headers=AUTH, timeout=300) as client:
            stream_body = {**SHORT, "stream": True, "max_tokens": 4}
            stream = asyncio.ensure_future(_stream_lines(client, stream_body))
            posts = [client.post("/v1/chat/completions", json=SHORT) for _ in range(63)]
            responses = await asyncio.gather(*posts)
            return list(responses), await stream

    responses, lines = asyncio.run(burst())
    statuses = Counter(r.status_code for r in responses)
    print(f"\ncold burst: sent 64, succeeded {statuses[200] + 1} (63 JSON + 1 stream)")
    assert statuses == {200: 63}
    assert all(r.headers["x-cold-start"] == "true" for r in responses)
    waits = [r.json()["vllm_autoscale"]["queue_wait_ms"] for r in responses]
    assert min(waits) > 1000  # they really waited for the engine to start
    assert _status(stack)["cold_starts"] == starts + 1  # one engine start served all 64
    # The stream waited too, with progress comments (state, elapsed, estimate) every 2 s.
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    progress = [json.loads(line.removeprefix(": vllm-autoscale-progress "))
                for line in lines[:first_data]]  # fmt: skip
    # Until the first token: starting, then (64 requests in one batch) warm but still busy.
    states = {p["state"] for p in progress}
    assert "starting" in states and states <= {"cold", "starting", "warm"}, states
    assert lines[-1] == "data: [DONE]"


def test_full_queue_answers_503_with_retry_after(stack) -> None:
    transport = stack.transport
    stack.call(transport.scale_down)
    transport.max_queue = 2
    try:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=stack.url, headers=AUTH, timeout=300) as c:
                return list(
                    await asyncio.gather(
                        *(c.post("/v1/chat/completions", json=SHORT) for _ in range(5))
                    )
                )

        responses = asyncio.run(burst())
    finally:
        transport.max_queue = stack.settings.max_queue
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 2, 503: 3}
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) > 0
            assert r.json()["error"]["type"] == "overloaded"


CHAT, BATCH = "/v1/chat/completions", "/v1/chat/completions/batch"
BAD_INPUTS = [
    (CHAT, {}, 422, "messages"),
    (CHAT, {"messages": []}, 422, "messages"),
    (CHAT, {"messages": [{"role": "wiz", "content": "x"}]}, 422, "messages.0.role"),
    (CHAT, {**SHORT, "temperature": 3}, 422, "temperature"),
    (CHAT, {**SHORT, "max_tokens": 0}, 422, "max_tokens"),
    (CHAT, {**SHORT, "max_tokens": 100_000}, 422, "max_tokens"),
    (CHAT, {**SHORT, "n": 100}, 422, "n"),
    (CHAT, {**SHORT, "model": "gpt-4o"}, 404, "model"),
    (CHAT, {"messages": "hello"}, 422, "messages"),
    ("/chat", {"messages": [{"role": "user", "content": 5}]}, 422, "messages.0.content"),
    ("/chat", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 422, "max_tokens"),
    (BATCH, {"requests": []}, 422, "requests"),
    (BATCH, {"requests": [{**SHORT, "stream": True}]}, 422, "requests.0.stream"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD_INPUTS)
def test_bad_input_is_4xx_naming_the_field(warm_stack, http, path, body, status, param) -> None:
    resp = http.post(path, json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["param"] == param


def test_non_json_and_oversized_bodies(warm_stack, http) -> None:
    resp = http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422 and resp.json()["error"]["param"]
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 5_000_000}]})
    resp = http.post(
        "/v1/chat/completions", content=big, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 413 and resp.json()["error"]["param"] == "body"

    def chunked():
        yield big.encode()

    resp = http.post("/chat", content=chunked(), headers={"content-type": "application/json"})
    assert resp.status_code == 413


def test_engine_rejections_pass_through_as_4xx(warm_stack, http) -> None:
    too_long = {"messages": [{"role": "user", "content": "word " * 5000}], "max_tokens": 5}
    resp = http.post("/v1/chat/completions", json=too_long)
    assert resp.status_code == 400 and "context" in resp.json()["error"]["message"].lower()
    bad_format = {**SHORT, "response_format": {"type": "no-such-format"}}
    assert 400 <= http.post("/v1/chat/completions", json=bad_format).status_code < 500
    stream_too_long = {**too_long, "stream": True}
    resp = http.post("/v1/chat/completions", json=stream_too_long)
    assert resp.status_code == 400  # errors before the first token keep their status


def _engine_running(stack) -> float:
    text = httpx.get(stack.transport.engine.base_url + "/metrics", timeout=5).text
    match = re.search(r"^vllm:num_requests_running\{[^}]*\} ([0-9.]+)", text, re.M)
    return float(match.group(1)) if match else 0.0


LONG = {
    "messages": [{"role": "user", "content": "Tell a long story."}],
    "max_tokens": 1500,
    "ignore_eos": True,  # vLLM: generate all 1500 tokens
}


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_cancels_engine_request(warm_stack, stream) -> None:
    client = httpx.Client(base_url=warm_stack.url, headers=AUTH, timeout=2)
    with pytest.raises(httpx.ReadTimeout), client:
        if stream:
            with client.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as r:
                for _ in r.iter_lines():
                    raise httpx.ReadTimeout("hang up mid-stream")
        else:
            client.post("/v1/chat/completions", json=LONG)
    # 1500 tokens take the CPU engine ~50 s; a cancelled request is gone in a moment.
    _wait_for(lambda: _engine_running(warm_stack) == 0, 15, "the engine to drop the request")


def test_engine_killed_mid_stream_and_mid_request(warm_stack) -> None:
    pid = warm_stack.transport.engine.pid
    starts = _status(warm_stack)["cold_starts"]

    async def run() -> tuple[list[str], httpx.Response]:
        async with httpx.AsyncClient(base_url=warm_stack.url, headers=AUTH, timeout=120) as client:
            plain = asyncio.ensure_future(client.post("/v1/chat/completions", json=LONG))
            lines: list[str] = []
            async with client.stream(
                "POST", "/v1/chat/completions", json={**LONG, "stream": True}
            ) as r:
                async for line in r.aiter_lines():
                    if line:
                        lines.append(line)
                    if len(lines) == 5:
                        os.killpg(pid, signal.SIGKILL)  # the engine dies mid-stream
            return lines, await plain

    lines, plain = asyncio.run(run())
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][5:])["error"]
    assert error["type"] == "engine_unavailable" and error["message"]
    assert plain.status_code == 503 and plain.json()["error"]["type"] == "engine_unavailable"
    # The wrapper keeps serving; the next request starts a new engine.
    assert httpx.get(warm_stack.url + "/health").status_code == 200
    resp = httpx.post(
        warm_stack.url + "/v1/chat/completions", json=SHORT, headers=AUTH, timeout=300
    )
    assert resp.status_code == 200 and resp.headers["x-cold-start"] == "true"
    assert _status(warm_stack)["cold_starts"] == starts + 1


def test_request_id_echoed_and_logged_without_secrets(warm_stack, http, caplog) -> None:
    caplog.set_level(logging.INFO, logger="vllm_autoscale")
    resp = http.post("/chat", json=SHORT, headers={"x-request-id": "trace-123"})
    assert resp.headers["x-request-id"] == "trace-123"
    assert resp.json()["metadata"]["request_id"] == "trace-123"

    def records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "request_id", None) == "trace-123"]

    # The log line is written just after the response has gone out.
    _wait_for(records, 5, "the request's log line")
    assert records()[0].status == 200 and records()[0].path == "/chat"
    httpx.post(warm_stack.url + "/chat", json=SHORT, headers={"authorization": "Bearer leaked-key"})
    assert API_KEY not in caplog.text and "leaked-key" not in caplog.text
    assert all(API_KEY not in str(r.__dict__) for r in caplog.records)


def test_metrics_count_requests_tokens_and_ttft(warm_stack, http) -> None:
    with http.stream("POST", "/v1/chat/completions", json={**SHORT, "stream": True}) as resp:
        assert "data: [DONE]" in list(resp.iter_lines())
    text = http.get("/metrics").text
    assert re.search(
        r'vllm_autoscale_requests_total\{route="/v1/chat/completions",status="200"\} [1-9]', text
    )
    assert re.search(r'vllm_autoscale_tokens_total\{direction="out"\} [1-9]', text)
    assert re.search(r"vllm_autoscale_time_to_first_token_seconds_count [1-9]", text)
    assert re.search(r"vllm_autoscale_request_seconds_bucket", text)
    assert re.search(r"vllm_autoscale_cold_starts [1-9]", text)
    assert "vllm_autoscale_queue_depth 0.0" in text


def test_load_1000_requests_at_16_concurrency(warm_stack) -> None:
    routes = [
        ("/v1/chat/completions", {**SHORT, "max_tokens": 2}),
        ("/chat", {**SHORT, "max_tokens": 2}),
        ("/v1/chat/completions", {**SHORT, "max_tokens": 2, "stream": True}),
    ]

    async def load() -> Counter:
        statuses: Counter = Counter()
        limit = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=warm_stack.url, headers=AUTH, timeout=120) as client:

            async def one(i: int) -> None:
                path, body = routes[i % len(routes)]
                async with limit:
                    resp = await client.post(path, json=body)
                    ok = resp.status_code == 200 and (
                        b"[DONE]" in resp.content if body.get("stream") else bool(resp.json())
                    )
                    statuses[resp.status_code if ok else "broken"] += 1

            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(1000))), 600)
        return statuses

    started = time.monotonic()
    statuses = asyncio.run(load())
    print(f"\nload: sent 1000, got {dict(statuses)} in {time.monotonic() - started:.1f} s")
    assert statuses == {200: 1000}
