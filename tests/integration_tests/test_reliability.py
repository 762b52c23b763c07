"""Faults, on the live stack: a killed engine leaves nothing behind and the wrapper says who
failed; a start failure explains itself and backs off; SIGTERM drains."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from deploy.engine.local_model import local_engine_config, prepare_local_model
from deploy.engine.process import free_port
from deploy.settings.settings import Settings
from deploy.transports import local as transport_local
from deploy.transports.local import LocalTransport
from deploy.wrapper import create_app
from langchain_vllm_autoscale import ChatVLLMAutoscale
from tests.integration_tests.conftest import API_KEY, serve_on_stack

AUTH = {"authorization": f"Bearer {API_KEY}"}
SHORT = {"messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 3}
REPO = Path(__file__).resolve().parents[2]


def _status(url: str, headers: dict[str, str] | None = None) -> dict:
    return httpx.get(url + "/status", headers=headers or AUTH, timeout=10).json()


def _group(pgid: int) -> list[int]:
    """The live processes of a process group (zombies excluded)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members


def _wait(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def test_killing_the_api_server_leaves_no_engine_process(warm_stack) -> None:
    pid = _status(warm_stack.url)["engine_pid"]
    assert len(_group(pid)) >= 3  # API server, engine core, worker
    os.kill(pid, signal.SIGKILL)
    took = _wait(lambda: not _group(pid), 5, "the engine's process group to be gone")
    print(f"\nkill -9 of vLLM's API server: whole group gone in {took:.2f} s")
    status = _status(warm_stack.url)
    assert status["state"] == "cold" and status["engine_pid"] is None
    assert "exited" in status["last_error"]
    resp = httpx.post(warm_stack.url + "/v1/chat/completions", json=SHORT, headers=AUTH,
                      timeout=300)  # fmt: skip
    assert resp.status_code == 200 and resp.headers["x-cold-start"] == "true"
    assert _status(warm_stack.url)["last_error"] is None  # cleared by the success


def _engine_core(pgid: int) -> int:
    for pid in _group(pgid):
        if "EngineCore" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return pid
    raise AssertionError("no EngineCore process in the engine's group")


def test_a_dead_engine_core_is_a_503_the_client_retries_to_success(warm_stack) -> None:
    pgid = _status(warm_stack.url)["engine_pid"]
    os.kill(_engine_core(pgid), signal.SIGKILL)
    time.sleep(0.5)
    first = httpx.post(warm_stack.url + "/v1/chat/completions", json=SHORT, headers=AUTH,
                       timeout=300)  # fmt: skip
    print(f"\nfirst request after the EngineCore kill: {first.status_code} {first.text[:200]}")
    assert first.status_code == 503, first.text
    assert first.json()["error"]["type"] == "engine_unavailable"
    assert int(first.headers["retry-after"]) > 0
    _wait(lambda: not _group(pgid), 10, "the broken engine to be stopped")
    llm = ChatVLLMAutoscale(base_url=warm_stack.url, api_key=API_KEY, max_tokens=3, max_retries=3)
    reply = llm.invoke("Say ok.")
    assert reply.response_metadata["service"]["cold_start"] is True


def test_out_of_range_pass_through_integer_is_a_4xx(warm_stack, http) -> None:
    resp = http.post("/v1/chat/completions", json={**SHORT, "top_k": 10**30})
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "top_k"
    nested = http.post(
        "/v1/chat/completions", json={**SHORT, "logit_bias": {"1": 1}, "extra": {"n": [2**70]}}
    )
    assert nested.status_code == 422 and nested.json()["error"]["param"] == "extra.n.0"
    within = http.post("/v1/chat/completions", json={**SHORT, "top_k": 2**62})
    assert within.status_code < 500, within.text  # vLLM's own verdict, never a 500
    assert http.post("/v1/chat/completions", json=SHORT).status_code == 200
    assert _status(warm_stack.url)["last_error"] is None


def test_a_start_failure_explains_itself_backs_off_and_recovers(
    stack, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(transport_local, "RESTART_BACKOFF_S", 3.0)
    missing = tmp_path / "model"  # the engine's model folder, not there yet
    config = dataclasses.replace(local_engine_config(), model=str(missing))
    transport = LocalTransport(config, scaledown_window=None)
    settings = Settings(wrapper_api_key=SecretStr(API_KEY))
    try:
        with (
            serve_on_stack(stack, create_app(transport, settings)) as url,
            httpx.Client(base_url=url, headers=AUTH, timeout=300) as http,
        ):
            failed = http.post("/v1/chat/completions", json=SHORT)
            assert failed.status_code == 503, failed.text
            error = failed.json()["error"]
            print(f"\nstart failure as the caller sees it: {error['message']}")
            assert error["type"] == "engine_start_failed"
            assert str(tmp_path) not in error["message"] and "Traceback" not in error["message"]
            assert "Error" in error["message"]  # the root cause, by name
            assert failed.headers["retry-after"] == "3"
            started = time.monotonic()
            again = http.post("/v1/chat/completions", json=SHORT)
            assert again.status_code == 503 and time.monotonic() - started < 1  # no relaunch
            assert "next start attempt in" in again.json()["error"]["message"]
            status = http.get("/status").json()
            assert status["state"] == "failed" and status["next_start_at"] > time.time() - 1
            # The operator fixes it: the model appears. No wrapper restart needed.
            missing.mkdir()
            for item in prepare_local_model().iterdir():
                (missing / item.name).symlink_to(item)
            _wait(lambda: time.time() > status["next_start_at"], 10, "the backoff to pass")
            fixed = http.post("/v1/chat/completions", json=SHORT)
            assert fixed.status_code == 200, fixed.text
            assert http.get("/status").json()["last_error"] is None
    finally:
        stack.call(transport.aclose)


LONG = {"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 1500,
        "ignore_eos": True}  # fmt: skip


async def _stream(client: httpx.AsyncClient, started: asyncio.Event) -> list[str]:
    lines = []
    async with client.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                lines.append(line)
                started.set()
    return lines


def test_sigterm_drains_requests_and_ends_streams_cleanly(tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "VLLM_DRAIN_GRACE": "8"}
    env.pop("VLLM_WRAPPER_API_KEY", None)
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "deploy.ops.cli", "serve", "--local", "--port", str(port), "--warm",
         "--scaledown-window", "0", "--log-level", "WARNING",
         "--engine-log", str(tmp_path / "engine.log")],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _serving(url), 300, "the local stack to be warm")

        async def run() -> tuple[list[list[str]], list[httpx.Response]]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                flags = [asyncio.Event() for _ in range(8)]
                streams = [asyncio.ensure_future(_stream(client, f)) for f in flags]
                await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), 120)
                plain = [
                    asyncio.ensure_future(client.post("/v1/chat/completions", json={
                        "messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 4}))
                    for _ in range(2)
                ]  # fmt: skip
                await asyncio.sleep(0.3)  # the plain requests are in flight
                serve.send_signal(signal.SIGTERM)
                return list(await asyncio.gather(*streams)), list(await asyncio.gather(*plain))

        streams, plain = asyncio.run(run())
        assert [r.status_code for r in plain] == [200, 200]  # in flight: finished
        for lines in streams:
            assert lines[-1] == "data: [DONE]"
            error = json.loads(lines[-2][5:])["error"]
            assert error["type"] == "engine_unavailable" and "shut down" in error["message"]
        assert serve.wait(60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        log.close()


def _serving(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url + "/health", timeout=2).json()["engine_state"] == "warm"
    return False


@pytest.fixture(autouse=True)
def _engine_back(request, stack):
    """Tests here break the shared engine; the next test gets a warm one again."""
    yield
    if "warm_stack" in request.fixturenames:
        stack.wait_warm()
