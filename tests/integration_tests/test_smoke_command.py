"""``vllm-autoscale smoke URL`` against the live local stack: its four checks pass; against
a stack that is not running it exits 1 with one line naming the check that failed."""

from __future__ import annotations

import subprocess
import sys

from deploy.engine.process import free_port
from tests.integration_tests.conftest import API_KEY


def _smoke(url: str, key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.ops.cli", "smoke", url, "--api-key", key,
         "--timeout", "120"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_smoke_passes_against_the_live_stack(warm_stack) -> None:
    out = _smoke(warm_stack.url, API_KEY)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[1] for line in lines[:4]] == ["health", "chat", "stream", "tool"]
    assert "get_weather(" in lines[3] and lines[-1] == "smoke passed"


def test_smoke_fails_in_one_line_against_a_stopped_stack(warm_stack) -> None:
    stopped = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = _smoke(stopped, API_KEY)
    assert out.returncode == 1 and out.stdout == ""
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"error: smoke health failed against {stopped}: ConnectError")
    refused = _smoke(warm_stack.url, "wrong-key")
    assert refused.returncode == 1
    assert "smoke chat failed" in refused.stderr and "HTTP 401" in refused.stderr
