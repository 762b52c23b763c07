"""``smoke URL``: after a deploy or an upgrade, four checks against a running wrapper, in
order: health, one chat, one stream, one forced tool call. Each passed check is one line; the
first that fails is one ``CliError`` line naming it, and the command exits 1."""

# ruff: noqa: T201 - a command's output is what it prints

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from .errors import CliError

__all__ = ["smoke"]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
MESSAGES = [{"role": "user", "content": "Say hello in one word."}]


class SmokeFailed(Exception):
    """A check's failure: what it saw instead of what it expected."""


def _client(args: argparse.Namespace) -> httpx.Client:
    """The client every check uses (tests replace it with a mock transport's)."""
    key = args.api_key or os.environ.get("VLLM_AUTOSCALE_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    # A cold GPU takes minutes to answer the first chat: the read time-out allows one boot.
    timeout = httpx.Timeout(args.timeout, connect=10)
    return httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=timeout)


def _ok(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        raise SmokeFailed(f"HTTP {resp.status_code}: {' '.join(resp.text[:200].split())}")
    return resp.json()


def _health(http: httpx.Client, model: str | None) -> str:
    body = _ok(http.get("/health"))
    if body.get("status") != "healthy":
        raise SmokeFailed(f"status {body.get('status')!r}")
    return f"engine {body.get('engine_state')}, model {body.get('model')}"


def _body(model: str | None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": MESSAGES, "max_tokens": 16, **fields}
    return {"model": model, **body} if model else body


def _chat(http: httpx.Client, model: str | None) -> str:
    answer = _ok(http.post("/v1/chat/completions", json=_body(model)))
    content = (answer.get("choices") or [{}])[0].get("message", {}).get("content")
    if not content:
        raise SmokeFailed(f"no content in the answer: {json.dumps(answer)[:200]}")
    return f"{answer.get('usage', {}).get('completion_tokens')} tokens"


def _stream(http: httpx.Client, model: str | None) -> str:
    text, done = [], False
    body = _body(model, stream=True)
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code >= 400:
            resp.read()
            _ok(resp)
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue  # keep-alives and progress comments
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                raise SmokeFailed(f"error event: {event['error'].get('message')}")
            for choice in event.get("choices") or []:
                text.append(choice.get("delta", {}).get("content") or "")
    if not done:
        raise SmokeFailed("the stream ended without [DONE]")
    if not "".join(text):
        raise SmokeFailed("the stream carried no content")
    return f"{len(''.join(text))} characters"


def _tool_call(http: httpx.Client, model: str | None) -> str:
    body = _body(
        model,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
    )
    answer = _ok(http.post("/v1/chat/completions", json=body))
    calls = (answer.get("choices") or [{}])[0].get("message", {}).get("tool_calls") or []
    if not calls or calls[0].get("function", {}).get("name") != "get_weather":
        raise SmokeFailed(f"no get_weather call: {json.dumps(answer)[:200]}")
    try:
        arguments = json.loads(calls[0]["function"].get("arguments") or "")
    except ValueError:
        raise SmokeFailed("the call's arguments are not JSON") from None
    return f"get_weather({json.dumps(arguments)})"


CHECKS: list[tuple[str, Callable[[httpx.Client, str | None], str]]] = [
    ("health", _health),
    ("chat", _chat),
    ("stream", _stream),
    ("tool call", _tool_call),
]


def smoke(args: argparse.Namespace) -> int:
    with _client(args) as http:
        for name, check in CHECKS:
            started = time.monotonic()
            try:
                detail = check(http, args.model)
            except SmokeFailed as exc:
                raise CliError(f"smoke {name} failed against {args.url}: {exc}") from None
            except (httpx.HTTPError, ValueError) as exc:
                raise CliError(
                    f"smoke {name} failed against {args.url}: {type(exc).__name__}: {exc}"
                ) from None
            print(f"ok {name:<10} {time.monotonic() - started:6.1f} s  {detail}", flush=True)
    print("smoke passed")
    return 0
