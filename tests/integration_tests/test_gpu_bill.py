"""The bill, shared, on the live stack: a scripted day of three keys (bursts with gaps longer
than the scaledown window, some concurrency, one dropped stream) over the real engine. Per
model, the keys' allocated GPU seconds plus the ``(unallocated)`` line equal the engine's
measured up-time (its processes' lives) within 1%, and ``/v1/usage``, ``/v1/gpu``,
``/status``, ``/metrics`` and ``vllm-autoscale usage --json`` give the same figures."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from pydantic import SecretStr

from deploy.gateway.store import MemoryStore
from deploy.ops.local_stack import LocalStack
from deploy.settings.settings import Settings
from deploy.wrapper import create_app
from tests.integration_tests.conftest import serve_on_stack

KEYS = {name: f"sk-{name}-" + name[0] * 24 for name in ("lead", "alice", "bob", "carol")}
BODY = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
WINDOW_S = 3.0


def _wait_cold(stack: LocalStack, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    # Cold, and its process gone: the GPU is billed until the process has stopped.
    while stack.transport.state != "cold" or any(
        life.stopped_at is None for life in stack.transport.lives()
    ):
        assert time.monotonic() < deadline, "the engine did not scale down"
        time.sleep(0.2)


def _chat(url: str, who: str) -> int:
    headers = {"authorization": f"Bearer {KEYS[who]}"}
    return httpx.post(
        f"{url}/v1/chat/completions", json=BODY, headers=headers, timeout=600
    ).status_code


def _dropped_stream(url: str, who: str) -> None:
    headers = {"authorization": f"Bearer {KEYS[who]}"}
    body = {**BODY, "stream": True, "max_tokens": 32}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers,
                      timeout=600) as response:  # fmt: skip
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break  # the client leaves after its first chunk


def _measured_today(stack: LocalStack) -> float:
    """The engine's up-time today (UTC), from its processes' own lives."""
    now = time.time()
    day = now - now % 86400
    return sum(
        max(0.0, min(life.stopped_at or now, now) - max(life.up_since, day))
        for life in stack.transport.lives()
    )


@pytest.mark.timeout(1800)
def test_a_scripted_day_allocates_every_second_the_engine_was_up(stack: LocalStack) -> None:
    entries = [{"name": "lead", "key": KEYS["lead"], "role": "admin"}] + [
        {"name": n, "key": KEYS[n]} for n in ("alice", "bob", "carol")
    ]
    settings = Settings(api_keys=SecretStr(json.dumps(entries)), state_sync_interval=0.5,
                        scaledown_window=int(WINDOW_S), cache_max_entries=0)  # fmt: skip
    app = create_app(stack.transport, settings, store=MemoryStore())
    model = stack.transport.model_name
    lead = {"authorization": f"Bearer {KEYS['lead']}"}
    stack.call(stack.transport.scale_down)  # the day starts cold
    stack.transport.scaledown_window = WINDOW_S
    try:
        with serve_on_stack(stack, app) as url, ThreadPoolExecutor(4) as pool:
            # Burst 1: a cold start, alice twice and bob at once.
            codes = list(pool.map(lambda who: _chat(url, who), ["alice", "alice", "bob"]))
            assert codes == [200, 200, 200]
            _wait_cold(stack)
            # Burst 2, after a gap longer than the window: carol, and alice's dropped stream.
            assert _chat(url, "carol") == 200
            _dropped_stream(url, "alice")
            _wait_cold(stack)
            measured = _measured_today(stack)
            today = dt.datetime.now(dt.timezone.utc).date().isoformat()

            with httpx.Client(base_url=url, headers=lead, timeout=60) as http:
                deadline = time.monotonic() + 30  # the dropped stream is booked as it closes
                while True:
                    usage = http.get("/v1/usage", params={"start": today, "end": today}).json()
                    rows = [r for r in usage["data"] if r["model"] == model]
                    alice = sum(r["requests"] for r in rows if r["key"] == "alice")
                    if alice == 3 or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                allocated = sum(r["gpu_seconds"] for r in rows)
                assert allocated == pytest.approx(measured, rel=0.01), (rows, measured)
                by_key = {r["key"]: r for r in rows}
                assert {"alice", "bob", "carol"} <= set(by_key)
                assert by_key["alice"]["requests"] == 3  # the dropped stream is booked
                for r in rows:  # boot and idle are part of what each key pays
                    parts = r["busy_seconds"] + r["boot_seconds"] + r["idle_seconds"]
                    assert r["gpu_seconds"] == pytest.approx(parts, abs=1e-3)
                assert sum(r["boot_seconds"] for r in rows) > 0
                assert sum(r["idle_seconds"] for r in rows) >= 2 * WINDOW_S * 0.9

                gpu = http.get("/v1/gpu").json()["models"][model]
                assert gpu["today"]["up_s"] == pytest.approx(measured, rel=0.01)
                # /status and /metrics: as of the last sync that read the allocation.
                deadline = time.monotonic() + 30
                while True:
                    status = http.get("/status").json()["gpu"][model]["today"]["up_s"]
                    if status == pytest.approx(measured, rel=0.01) or time.monotonic() > deadline:
                        break
                    time.sleep(1)
                assert status == pytest.approx(measured, rel=0.01)
                metrics = http.get("/metrics").text
                found = re.search(
                    rf'vllm_autoscale_gpu_seconds{{model="{re.escape(model)}",part="up",'
                    r'period="today"} ([0-9.e+]+)', metrics)  # fmt: skip
                assert found and float(found.group(1)) == pytest.approx(measured, rel=0.01)

            cli = subprocess.run(
                [sys.executable, "-m", "deploy.ops.cli", "usage", "--url", url, "--api-key",
                 KEYS["lead"], "--start", today, "--end", today, "--json"],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            cli_rows = [r for r in json.loads(cli.stdout)["data"] if r["model"] == model]
            assert sum(r["gpu_seconds"] for r in cli_rows) == pytest.approx(allocated, rel=1e-6)
    finally:
        stack.transport.scaledown_window = None
        with contextlib.suppress(Exception):
            stack.wait_warm()
