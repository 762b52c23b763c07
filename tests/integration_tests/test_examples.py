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


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(warm_stack, api_key, name, request) -> None:
    # The RAG example needs an embedding model too: the wrapper that serves one beside the chat.
    url = request.getfixturevalue("embedding_url") if name == "rag.py" else warm_stack.url
    if name == "cold_start_progress.py":  # its point is a cold start
        warm_stack.call(warm_stack.transport.scale_down)
    env = {**os.environ, "VLLM_AUTOSCALE_URL": url, "VLLM_AUTOSCALE_API_KEY": api_key}
    runner = ["bash"] if name.endswith(".sh") else [sys.executable]
    proc = subprocess.run(
        [*runner, str(EXAMPLES / name)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for fragment in EXPECTED[name]:
        assert fragment in proc.stdout, f"{fragment!r} not in output:\n{proc.stdout}"
    if name == "cold_start_progress.py":  # the wait was shown, not silent
        waits = int(proc.stdout.split("progress events while waiting:")[1].split()[0])
        assert waits >= 2, proc.stdout
    assert api_key not in proc.stdout + proc.stderr
