"""The walking skeleton: the seed's API and a LangChain call through the real stack."""

from __future__ import annotations

import httpx

from deploy.core.version import __version__
from langchain_vllm_autoscale import AuthenticationError, ChatVLLMAutoscale


def test_root_matches_seed(stack, http: httpx.Client) -> None:
    body = httpx.get(stack.url + "/").json()
    assert body == {
        "service": "VLLM Auto-Scale Service",
        "version": "2.0.0",
        "architecture": {
            "wrapper": "Always-on (no GPU)",
            "vllm": "Auto-scale to zero (with GPU)",
            "scaledown_window": "2 minutes",
        },
        "model": stack.transport.model_name,
        "package_version": __version__,  # added beside the seed's fields, none changed
    }


def test_health_matches_seed_without_key(stack) -> None:
    body = httpx.get(stack.url + "/health").json()
    seed = {
        "status": "healthy",
        "wrapper_status": "running",
        "vllm_status": "auto-scaling (idle or active)",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "architecture": "separated",
    }
    assert {k: body[k] for k in seed} == seed
    assert body["engine_state"] in {"cold", "starting", "warm", "failed"}


def test_chat_route_seed_shape(warm_stack, http: httpx.Client) -> None:
    resp = http.post(
        "/chat",
        json={"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 12},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert isinstance(body["content"], str) and body["content"].strip()
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    assert body["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert body["finish_reason"] in {"stop", "length"}
    assert resp.headers["x-request-id"] == body["metadata"]["request_id"]


def test_auth_required_on_inference_routes(stack) -> None:
    payload = {"messages": [{"role": "user", "content": "hi"}]}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic abc"}):
        resp = httpx.post(stack.url + "/chat", json=payload, headers=headers)
        assert resp.status_code == 401
        assert resp.json()["error"]["type"] == "authentication_error"
        assert "wrong" not in resp.text
    assert httpx.get(stack.url + "/status").status_code == 401
    assert httpx.get(stack.url + "/v1/models").status_code == 401


def test_invoke_through_wrapper(warm_stack, api_key: str) -> None:
    llm = ChatVLLMAutoscale(base_url=warm_stack.url, api_key=api_key, max_tokens=16, temperature=0)
    msg = llm.invoke("What is the capital of France?")
    assert isinstance(msg.content, str) and msg.content.strip()
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["input_tokens"] > 0
    assert msg.usage_metadata["output_tokens"] > 0
    assert msg.response_metadata["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert msg.response_metadata["finish_reason"] in {"stop", "length"}
    assert msg.response_metadata["service"]["cold_start"] is False


async def test_ainvoke_through_wrapper(warm_stack, api_key: str) -> None:
    llm = ChatVLLMAutoscale(base_url=warm_stack.url, api_key=api_key, max_tokens=8)
    msg = await llm.ainvoke("Hello")
    assert msg.usage_metadata and msg.usage_metadata["output_tokens"] > 0
    await llm.aclose()


def test_wrong_key_raises_authentication_error(warm_stack) -> None:
    llm = ChatVLLMAutoscale(base_url=warm_stack.url, api_key="nope", max_retries=0)
    try:
        llm.invoke("hi")
    except AuthenticationError as exc:
        assert exc.status_code == 401
        assert "nope" not in str(exc)
    else:
        raise AssertionError("expected AuthenticationError")
