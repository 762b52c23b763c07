"""``vllm-autoscale smoke``'s checks against a wrapper's answers (``httpx.MockTransport``):
each check passes on a right answer, and a wrong one stops the command at that check, named."""

from __future__ import annotations

import json

import httpx
import pytest

from deploy.ops import cli
from deploy.ops.cli import smoke as smoke_command

URL = "http://wrapper.test"


def chat_answer(body: dict) -> dict:
    if body.get("tool_choice"):
        call = {"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
    else:
        message = {"role": "assistant", "content": "Hello"}
    return {"choices": [{"message": message}], "usage": {"completion_tokens": 1}}


def stream_body() -> bytes:
    chunk = {"choices": [{"delta": {"content": "Hello"}}]}
    return f": progress\n\ndata: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()


def wrapper(tool_calls: bool = True):
    seen: list[dict] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "healthy", "engine_state": "warm"})
        body = json.loads(request.content)
        seen.append(body)
        if body.get("stream"):
            return httpx.Response(200, content=stream_body())
        if body.get("tool_choice") and not tool_calls:
            return httpx.Response(200, json=chat_answer({}))
        return httpx.Response(200, json=chat_answer(body))

    return handle, seen


@pytest.fixture
def install(monkeypatch):
    def put(handler) -> None:
        transport = httpx.MockTransport(handler)
        monkeypatch.setattr(
            smoke_command, "_client",
            lambda args: httpx.Client(base_url=args.url, transport=transport),
        )  # fmt: skip

    return put


def test_every_check_passes_on_right_answers(install, capsys) -> None:
    handler, seen = wrapper()
    install(handler)
    assert cli.main(["smoke", URL, "--api-key", "k"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "smoke passed"
    assert 'get_weather({"city": "Paris"})' in out
    forced = seen[-1]["tool_choice"]
    assert forced == {"type": "function", "function": {"name": "get_weather"}}


def test_a_wrong_answer_stops_at_its_check(install, capsys) -> None:
    handler, _ = wrapper(tool_calls=False)
    install(handler)
    assert cli.main(["smoke", URL, "--api-key", "k"]) == 1
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()
    assert line.startswith(f"error: smoke tool call failed against {URL}: no get_weather call")
    assert "ok stream" in captured.out and "smoke passed" not in captured.out
