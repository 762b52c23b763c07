"""Every example runs against the live local stack, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

EXPECTED = {
    "quickstart.py": ["usage:", "'output_tokens'"],
    "streaming.py": ["usage:", "finish reason:"],
    "async_usage.py": ["ainvoke:", "astream:", "abatch:"],
    "batch.py": [
        "8 answers",
        "(one request)",
        "with a bad input: ['AIMessage', 'ContextLengthError']",
    ],
    "tool_calling.py": ["model calls get_exchange_rate", "tool returns: 1 USD =", "answer:"],
    "agent.py": ["agent calls get_weather", "tool get_weather ->", "agent:"],
    "agents_v1.py": [
        "agent calls get_weather(",
        "[v1 blocks: ['tool_call']]",
        "tool get_weather ->",
        "structured_response: WeatherReport(city=",
    ],
    "structured_output.py": ["json_schema: City(", "function_calling: City(", "tokens used:"],
    "openai_sdk.py": ["model: HuggingFaceTB/SmolLM2-135M-Instruct", "reply:", "stream:"],
    "migrate_from_integrated.py": ["service: VLLM Auto-Scale Service 2.0.0", "content:"],
    "warmup_and_metadata.py": ["engine: warm", "cold start: False", "GPU cost $"],
    "rag.py": ["retrieved: python", "retrieved the right document for 5/5 questions"],
    "cold_start_progress.py": ["progress events while waiting:", "answer:"],
    "curl.sh": ['"status":"healthy"', '"content":', '"chat.completion"', "data: [DONE]"],
}


def test_every_example_is_covered() -> None:
    on_disk = {p.name for p in EXAMPLES.iterdir() if p.suffix in {".py", ".sh"}}
    assert on_disk == set(EXPECTED)


COLD = "cold_start_progress.py"  # its point is a cold start: it runs alone, after the others


def _start(name: str, url: str, api_key: str) -> subprocess.Popen[str]:
    env = {**os.environ, "VLLM_AUTOSCALE_URL": url, "VLLM_AUTOSCALE_API_KEY": api_key}
    runner = ["bash"] if name.endswith(".sh") else [sys.executable]
    return subprocess.Popen([*runner, str(EXAMPLES / name)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


@pytest.fixture(scope="module")
def warm_runs(stack, api_key, request) -> dict[str, subprocess.Popen[str]]:
    """Every example but the cold one, started together against the warm stack (each is a
    process of its own, as a user runs it; together their imports overlap the engine's work).
    The RAG example needs an embedding model too: the wrapper that serves one beside the chat."""
    stack.wait_warm()
    urls = {name: stack.url for name in EXPECTED if name != COLD}
    urls["rag.py"] = request.getfixturevalue("embedding_url")
    runs = {name: _start(name, url, api_key) for name, url in urls.items()}
    yield runs
    for proc in runs.values():
        proc.kill()
        proc.communicate()


def _check(name: str, proc: subprocess.Popen[str], api_key: str) -> str:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    for fragment in EXPECTED[name]:
        assert fragment in stdout, f"{fragment!r} not in output:\n{stdout}"
    assert api_key not in stdout + stderr
    return stdout


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {COLD}))
def test_example_runs(warm_runs, api_key, name) -> None:
    _check(name, warm_runs[name], api_key)


def test_the_cold_start_example_shows_the_wait(warm_stack, warm_runs, api_key) -> None:
    for proc in warm_runs.values():  # the others are done: the engine is the example's alone
        proc.wait(timeout=300)
    warm_stack.call(warm_stack.transport.scale_down)
    stdout = _check(COLD, _start(COLD, warm_stack.url, api_key), api_key)
    waits = int(stdout.split("progress events while waiting:")[1].split()[0])
    assert waits >= 2, stdout  # the wait was shown, not silent
