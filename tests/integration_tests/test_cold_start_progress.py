"""Cold starts people can see, on the live stack: a cold stream's headers leave at once and
its progress comes every few seconds until the first token; clients nobody here wrote (the
openai SDK, ChatOpenAI, litellm, the OpenAI Agents SDK) stream a cold request as they stream
a warm one; a ``create_agent`` run gets the progress in its custom stream; ``/status``
estimates a boot from the last ones; the wrapper's log tells the engine's story."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from deploy.ops.local_stack import LocalStack

PROMPT = "Name three colours."
MAX_TOKENS = 12
PROGRESS = ": vllm-autoscale-progress "


def _cold(stack: LocalStack) -> None:
    stack.call(stack.transport.scale_down)
    assert stack.transport.state == "cold"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def wrapper_log() -> Iterator[list[logging.LogRecord]]:
    """The wrapper's own log (its loggers do not propagate to the root)."""
    handler = _Records()
    logger = logging.getLogger("vllm_autoscale")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_cold_stream_opens_at_once_and_shows_its_progress_until_the_first_token(
    stack: LocalStack, api_key: str, wrapper_log: list[logging.LogRecord]
) -> None:
    _cold(stack)
    body = {"messages": [{"role": "user", "content": PROMPT}], "stream": True,
            "max_tokens": MAX_TOKENS, "temperature": 0}  # fmt: skip
    began = time.monotonic()
    progress: list[tuple[float, dict[str, Any]]] = []
    first_token = None
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=600,
                      headers={"authorization": f"Bearer {api_key}"}) as response:  # fmt: skip
        headers_after = time.monotonic() - began
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith(PROGRESS):
                progress.append((time.monotonic() - began, json.loads(line[len(PROGRESS) :])))
            elif line.startswith("data: {") and '"content"' in line and first_token is None:
                first_token = time.monotonic() - began
    assert headers_after < 1.0, headers_after
    assert first_token is not None and first_token > 2.0  # it was a real cold start
    times = [t for t, _ in progress]
    assert times and times[0] < 2.0, times
    gaps = [b - a for a, b in zip([0.0, *times], [*times, first_token], strict=True)]
    assert max(gaps) <= 5.0, gaps
    states = {p["state"] for _, p in progress}
    assert states <= {"cold", "starting"} and "starting" in states
    assert all(p["elapsed_s"] >= 0 for _, p in progress)
    # The engine's story, in the wrapper's log: why it started, when it was warm.
    events = [getattr(r, "event", None) for r in wrapper_log]
    assert "engine_starting" in events and "engine_warm" in events
    starting = next(r for r in wrapper_log if getattr(r, "event", None) == "engine_starting")
    assert "a request by key" in starting.getMessage()


def test_a_normal_scale_down_is_a_lifecycle_line_not_an_error(
    stack: LocalStack, wrapper_log: list[logging.LogRecord]
) -> None:
    stack.wait_warm()
    stack.transport.scaledown_window = 2.0
    try:
        stack.call(_watch_idle(stack))
        deadline = time.monotonic() + 60
        while stack.transport.state != "cold":
            assert time.monotonic() < deadline, "the engine did not scale down"
            time.sleep(0.2)
        time.sleep(1.0)  # vLLM's last words after its stop
    finally:
        stack.transport.scaledown_window = None
    events = [getattr(r, "event", None) for r in wrapper_log]
    assert "engine_scaled_down" in events
    errors = [r.getMessage() for r in wrapper_log if r.levelno >= logging.ERROR]
    assert errors == []


def _watch_idle(stack: LocalStack) -> Callable[[], Any]:
    async def watch() -> None:
        stack.transport._ensure_idle_watch()  # the window was None: no watch ran

    return watch


def test_a_create_agent_run_on_a_cold_engine_gets_progress_in_its_custom_stream(
    stack: LocalStack, api_key: str
) -> None:
    """LangChain 1.x ``create_agent``, streamed with ``["messages", "custom"]``: the first
    progress event within 2 s, then at least one every 5 s until the first token."""
    from langchain.agents import create_agent

    from langchain_vllm_autoscale import ChatVLLMAutoscale

    llm = ChatVLLMAutoscale(base_url=stack.url, api_key=api_key, temperature=0,
                            max_tokens=MAX_TOKENS, auto_warmup="never")  # fmt: skip
    agent = create_agent(llm, tools=[])
    _cold(stack)
    began = time.monotonic()
    progress, first_token = [], None
    question = {"messages": [{"role": "user", "content": PROMPT}]}
    for mode, data in agent.stream(question, stream_mode=["messages", "custom"]):
        if mode == "custom" and data.get("type") == "vllm_autoscale.progress":
            progress.append(time.monotonic() - began)
        elif mode == "messages" and data[0].content and first_token is None:
            first_token = time.monotonic() - began
    assert first_token is not None and progress, (progress, first_token)
    assert progress[0] < 2.0, progress
    gaps = [b - a for a, b in zip(progress, [*progress[1:], first_token], strict=True)]
    assert max(gaps) <= 5.0, gaps


# -- clients nobody here wrote, through a cold start ---------------------------------------------


def _openai(stack: LocalStack, key: str) -> str:
    import openai

    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0, timeout=600)
    stream = client.chat.completions.create(
        model=stack.transport.model_name, messages=[{"role": "user", "content": PROMPT}],
        stream=True, temperature=0, max_tokens=MAX_TOKENS,
    )  # fmt: skip
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def _chat_openai(stack: LocalStack, key: str) -> str:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=stack.url + "/v1", api_key=key, model=stack.transport.model_name,
                     temperature=0, max_tokens=MAX_TOKENS, timeout=600, max_retries=0)  # fmt: skip
    return "".join(str(c.content) for c in llm.stream(PROMPT))


def _litellm(stack: LocalStack, key: str) -> str:
    import litellm

    stream = litellm.completion(
        model="openai/" + stack.transport.model_name, api_base=stack.url + "/v1", api_key=key,
        messages=[{"role": "user", "content": PROMPT}], stream=True, temperature=0,
        max_tokens=MAX_TOKENS, timeout=600,
    )  # fmt: skip
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def _agents_sdk(stack: LocalStack, key: str) -> str:
    import openai
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        Runner,
        set_tracing_disabled,
    )
    from openai.types.responses import ResponseTextDeltaEvent

    set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0,
                                timeout=600)  # fmt: skip
    model = OpenAIChatCompletionsModel(model=stack.transport.model_name, openai_client=client)
    agent = Agent(name="a", instructions=None, model=model,
                  model_settings=ModelSettings(temperature=0, max_tokens=MAX_TOKENS))  # fmt: skip

    async def run() -> str:
        result = Runner.run_streamed(agent, input=PROMPT)
        text = ""
        async for event in result.stream_events():
            if event.type == "raw_response_event" and isinstance(
                event.data, ResponseTextDeltaEvent
            ):
                text += event.data.delta
        await client.close()  # on this loop, before asyncio.run closes it
        return text

    return asyncio.run(run())


CLIENTS: dict[str, Callable[[LocalStack, str], str]] = {
    "openai": _openai, "ChatOpenAI": _chat_openai, "litellm": _litellm,
    "agents-sdk": _agents_sdk,
}  # fmt: skip


@pytest.mark.parametrize("name", list(CLIENTS))
def test_a_client_streams_a_cold_request_as_it_streams_a_warm_one(
    stack: LocalStack, api_key: str, name: str
) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
    run = CLIENTS[name]
    _cold(stack)
    cold = run(stack, api_key)
    warm = run(stack, api_key)
    assert stack.transport.state == "warm"
    assert cold == warm and cold.strip(), (cold, warm)
    assert "vllm" not in cold.lower() and "keep-alive" not in cold  # no progress in the text


def test_status_estimates_a_boot_from_the_last_ones(stack: LocalStack, api_key: str) -> None:
    """After three boots, ``/status``'s ``eta_s`` during the fourth is within half of what
    that boot takes. The boots the tests above caused count: only missing ones are made."""
    auth = {"authorization": f"Bearer {api_key}"}

    def boots_known() -> int:
        status = httpx.get(f"{stack.url}/status", headers=auth, timeout=30).json()
        return len(status["boot"]["last_boots_s"])

    deadline = time.monotonic() + 600
    while boots_known() < 3:
        if stack.transport.state == "warm":
            _cold(stack)
        stack.wait_warm()
        time.sleep(3)  # the boot is in the meter (each sync takes it in)
        assert time.monotonic() < deadline
    _cold(stack)
    began = time.monotonic()
    httpx.post(f"{stack.url}/warmup", headers=auth, timeout=30).raise_for_status()
    estimates = []
    while stack.transport.state != "warm":
        boot = httpx.get(f"{stack.url}/status", headers=auth, timeout=30).json()["boot"]
        if boot.get("eta_s") is not None and boot.get("elapsed_s") is not None:
            estimates.append(boot["elapsed_s"] + boot["eta_s"])
        assert time.monotonic() - began < 600
        time.sleep(0.5)
    took = time.monotonic() - began
    assert estimates, "no estimate while the engine started"
    assert 0.5 * took <= estimates[0] <= 1.5 * took, (estimates[0], took)
