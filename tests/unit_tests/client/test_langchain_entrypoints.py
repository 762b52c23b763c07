"""What the README says about LangChain's entry points, checked offline: ``init_chat_model``
refuses this provider, the model object is what ``create_agent`` takes, and configurable
fields reach the request."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from langchain.agents import create_agent
from langchain.chat_models import init_chat_model
from langchain_core.runnables import ConfigurableField

from langchain_vllm_autoscale import ChatVLLMAutoscale

ANSWER = {
    "id": "chatcmpl-1",
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
}  # fmt: skip


@pytest.mark.parametrize("provider", ["vllm_autoscale", "vllm-autoscale"])
def test_init_chat_model_refuses_this_provider(provider: str) -> None:
    with pytest.raises(ValueError, match="Unsupported provider='vllm_autoscale'"):
        init_chat_model("HuggingFaceTB/SmolLM2-135M-Instruct", model_provider=provider)


def test_create_agent_refuses_a_provider_string() -> None:
    with pytest.raises(ValueError, match="model provider"):
        create_agent("vllm_autoscale:HuggingFaceTB/SmolLM2-135M-Instruct", tools=[])


def _recording_llm(bodies: list[dict[str, Any]]) -> ChatVLLMAutoscale:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/chat/completions":
            return httpx.Response(404, json={"detail": "Not Found"})
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=ANSWER)

    return ChatVLLMAutoscale(
        base_url="http://wrapper.test", temperature=0, http_transport=httpx.MockTransport(answer)
    )


def test_create_agent_takes_the_model_object() -> None:
    bodies: list[dict[str, Any]] = []
    agent = create_agent(_recording_llm(bodies), tools=[], system_prompt="Be brief.")
    result = agent.invoke({"messages": [{"role": "user", "content": "hi"}]})
    assert result["messages"][-1].text == "ok"
    assert bodies[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


def test_configurable_fields_reach_the_request() -> None:
    bodies: list[dict[str, Any]] = []
    configurable = _recording_llm(bodies).configurable_fields(
        temperature=ConfigurableField(id="temperature"),
        max_tokens=ConfigurableField(id="max_tokens"),
    )
    configurable.invoke("hi")
    configurable.invoke("hi", config={"configurable": {"temperature": 0.9, "max_tokens": 5}})
    assert [(b["temperature"], b.get("max_tokens")) for b in bodies] == [(0, None), (0.9, 5)]
