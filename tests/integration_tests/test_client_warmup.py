"""Warm-up from the client, measured on the live local stack: an agent whose first model call
comes T seconds after its run starts (a ``before_agent`` step standing in for retrieval or a
tool) waits the whole cold start B without warm-up, and about max(0, B - T) with
``WarmupCallbackHandler``, which wakes the engine when the run starts.

Two cold starts of the session's engine: one without warm-up (it measures B, with T = 0: with
nothing waking the engine, its first call waits the whole boot whatever T is), then one with
the handler and T = B / 2. The figures go to stdout and ``benchmarks/results/client_warmup.json``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any
from uuid import UUID

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware
from langchain_core.callbacks import BaseCallbackHandler

from langchain_vllm_autoscale import ChatVLLMAutoscale, WarmupCallbackHandler, warmup

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "client_warmup.json"
QUESTION = {"messages": [{"role": "user", "content": "Say hi."}]}


class Prepare(AgentMiddleware):
    """What an agent does before its first model call (retrieval, a tool): ``delay`` seconds.
    Then it notes the engine's state, as ``/status`` (which never wakes it) tells."""

    def __init__(self, llm: ChatVLLMAutoscale) -> None:
        super().__init__()
        self.delay = 0.0
        self.llm = llm
        self.state_at_model_call: str | None = None

    def before_agent(self, state: Any, runtime: Any) -> None:
        time.sleep(self.delay)
        self.state_at_model_call = self.llm.service_status()["state"]


class ModelTimer(BaseCallbackHandler):
    """When each chat-model call starts and ends."""

    def __init__(self) -> None:
        self.started: dict[UUID, float] = {}
        self.waits: list[float] = []
        self.offsets: list[float] = []
        self.run_started = 0.0

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **_: Any):
        self.started[run_id] = time.monotonic()
        self.offsets.append(self.started[run_id] - self.run_started)

    def on_llm_end(self, response: Any, *, run_id: UUID, **_: Any) -> None:
        self.waits.append(time.monotonic() - self.started.pop(run_id))


def _run(
    agent: Any, callbacks: list[BaseCallbackHandler], timer: ModelTimer
) -> tuple[float, dict[str, Any]]:
    """The run's total time and what the service said about its model call."""
    timer.run_started = time.monotonic()
    result = agent.invoke(QUESTION, config={"callbacks": [timer, *callbacks]})
    total = time.monotonic() - timer.run_started
    answer = result["messages"][-1]
    assert answer.text.strip()
    return total, answer.response_metadata["service"]


def test_warmup_handler_overlaps_the_cold_start_with_the_run(stack, api_key) -> None:
    # no-cache: the wrapper's gateway would answer a repeated temperature-0 request from its
    # cache without the engine.
    llm = ChatVLLMAutoscale(
        base_url=stack.url, api_key=api_key, temperature=0, max_tokens=4,
        default_headers={"cache-control": "no-cache"},
    )  # fmt: skip
    prepare = Prepare(llm)
    agent = create_agent(llm, tools=[], middleware=[prepare])
    timer = ModelTimer()

    # Without warm-up: the first model call waits the whole cold start.
    stack.call(stack.transport.scale_down)
    starts = stack.status()["cold_starts"]
    total_without, service_without = _run(agent, [], timer)
    (boot,) = timer.waits
    assert service_without["cold_start"] is True
    assert prepare.state_at_model_call == "cold"
    assert stack.status()["cold_starts"] == starts + 1

    # Warm: what a model call costs once the engine serves.
    warm_started = time.monotonic()
    assert llm.invoke("Say hi.").response_metadata["service"]["cold_start"] is False
    warm_call = time.monotonic() - warm_started

    # With the handler: the run's start wakes the engine, T = B / 2 of work follows.
    delay = round(boot / 2, 1)
    prepare.delay = delay
    stack.call(stack.transport.scale_down)
    starts = stack.status()["cold_starts"]
    warmup._LIMIT.clear()  # a fresh process's state: no warm-up sent yet
    handler = WarmupCallbackHandler.for_model(llm)
    timer.waits.clear()
    total_with, service_with = _run(agent, [handler], timer)
    (wait_with,) = timer.waits
    assert service_with["cold_start"] is True  # the engine served it, just booted
    model_call_offset = timer.offsets[-1]
    assert len(handler.fired) == 1  # one warm-up for the run (nested runs send none)
    assert stack.status()["cold_starts"] == starts + 1  # the warm-up's start served the call
    # When the model was called the engine was already booting (or up): the handler woke it.
    assert prepare.state_at_model_call in ("starting", "warm")

    expected = max(0.0, boot - delay)
    record = {
        "what": "first model call of a create_agent run whose model call comes T s after the "
        "run starts, engine cold (local stack, CPU vLLM)",
        "boot_wait_without_warmup_s": round(boot, 2),
        "t_before_model_call_s": delay,
        "model_call_offset_with_warmup_s": round(model_call_offset, 2),
        "wait_with_warmup_s": round(wait_with, 2),
        "expected_wait_max_0_b_minus_t_s": round(expected, 2),
        # The boot of the second run: it began with the run (the warm-up), ended with the wait.
        "boot_with_warmup_s": round(model_call_offset + wait_with, 2),
        "service_queue_wait_without_s": round(service_without["queue_wait_ms"] / 1000, 2),
        "service_queue_wait_with_s": round(service_with["queue_wait_ms"] / 1000, 2),
        "warm_call_s": round(warm_call, 2),
        "run_total_without_s": round(total_without, 2),
        "run_total_with_s": round(total_with, 2),
        "run_total_without_at_same_t_s": round(delay + boot, 2),
        "saved_s": round(boot - wait_with, 2),
        "state_at_model_call_with_warmup": prepare.state_at_model_call,
        "cold_starts_per_scenario": 1,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print("\nclient warm-up:", json.dumps(record, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")

    assert wait_with <= expected + 0.5 * delay, record
    assert wait_with < 0.8 * boot, record
