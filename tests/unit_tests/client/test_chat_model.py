"""ChatVLLMAutoscale without a server: parameters, request bodies, tools, serialisation."""

from __future__ import annotations

import json

import pytest
from langchain_core.load import dumpd, dumps, load
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, Field

from langchain_vllm_autoscale import ChatVLLMAutoscale


class GetWeather(BaseModel):
    """Get the weather for a city."""

    city: str = Field(description="City name")


def make(**kwargs) -> ChatVLLMAutoscale:
    return ChatVLLMAutoscale(base_url="http://127.0.0.1:9", **kwargs)


def test_defaults_suit_cold_starts(monkeypatch) -> None:
    monkeypatch.delenv("VLLM_AUTOSCALE_URL", raising=False)
    monkeypatch.delenv("VLLM_AUTOSCALE_API_KEY", raising=False)
    llm = ChatVLLMAutoscale()
    assert llm.base_url == "http://127.0.0.1:8000"
    assert llm.api_key is None
    assert llm.timeout == 180.0  # the seed client's time-out: a cold start takes 1-2 min
    assert llm.connect_timeout < 30
    assert llm._llm_type == "vllm-autoscale"


def test_env_configures_url_and_key(monkeypatch) -> None:
    monkeypatch.setenv("VLLM_AUTOSCALE_URL", "https://x--vllm-autoscale-wrapper.modal.run")
    monkeypatch.setenv("VLLM_AUTOSCALE_API_KEY", "sk-secret")
    llm = ChatVLLMAutoscale()
    assert llm.base_url.endswith("wrapper.modal.run")
    assert llm.api_key is not None and llm.api_key.get_secret_value() == "sk-secret"
    assert "sk-secret" not in repr(llm) and "sk-secret" not in str(llm.model_dump())
    assert llm._client._headers["authorization"] == "Bearer sk-secret"


def test_body_carries_instance_and_call_params() -> None:
    llm = make(
        temperature=0.2, max_tokens=50, top_p=0.9, seed=7, stop=["END"], presence_penalty=0.5,
        frequency_penalty=0.1, logprobs=True, top_logprobs=2,
        model_kwargs={"user": "u1"}, extra_body={"top_k": 20},
    )  # fmt: skip
    body = llm._build_body([HumanMessage("hi")], None, temperature=0.9, n=1)
    assert body["temperature"] == 0.9  # per call wins
    assert body["max_tokens"] == 50 and body["top_p"] == 0.9 and body["seed"] == 7
    assert body["stop"] == ["END"]
    assert body["presence_penalty"] == 0.5 and body["frequency_penalty"] == 0.1
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    assert body["user"] == "u1" and body["top_k"] == 20 and body["n"] == 1
    assert "model" not in body  # the service picks its one model
    assert llm._build_body([HumanMessage("hi")], ["STOP"])["stop"] == ["STOP"]


def test_internal_kwargs_are_not_sent() -> None:
    body = make()._build_body([HumanMessage("x")], None, ls_structured_output_format={"a": 1})
    assert "ls_structured_output_format" not in body


def test_stream_body_asks_for_usage() -> None:
    body = make()._stream_body([HumanMessage("x")], None)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert "stream_options" not in make(stream_usage=False)._stream_body([HumanMessage("x")], None)


def test_messages_round_trip_to_openai_shape() -> None:
    body = make()._build_body(
        [
            SystemMessage("Be brief."),
            HumanMessage("Weather in Paris?"),
            AIMessage(
                "", tool_calls=[{"name": "GetWeather", "args": {"city": "Paris"}, "id": "c1"}]
            ),
            ToolMessage("sunny", tool_call_id="c1"),
        ],
        None,
    )
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    call = body["messages"][2]["tool_calls"][0]
    assert call["id"] == "c1" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("any", "required"),
        ("required", "required"),
        (True, {"type": "function", "function": {"name": "GetWeather"}}),
        ("GetWeather", {"type": "function", "function": {"name": "GetWeather"}}),
    ],
)
def test_bind_tools_maps_tool_choice(choice, expected) -> None:
    bound = make().bind_tools([GetWeather], tool_choice=choice)
    assert bound.kwargs["tool_choice"] == expected  # type: ignore[attr-defined]
    assert bound.kwargs["tools"][0]["function"]["name"] == "GetWeather"  # type: ignore[attr-defined]


def test_bind_tools_rejects_unknown_tool_name() -> None:
    with pytest.raises(ValueError, match="not one of the bound tools"):
        make().bind_tools([GetWeather], tool_choice="other")


def test_bind_tools_accepts_functions_dicts_and_parallel_flag() -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    raw = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}
    bound = make().bind_tools([add, raw], parallel_tool_calls=False, strict=True)
    names = [t["function"]["name"] for t in bound.kwargs["tools"]]  # type: ignore[attr-defined]
    assert names == ["add", "noop"]
    assert bound.kwargs["parallel_tool_calls"] is False  # type: ignore[attr-defined]
    assert bound.kwargs["tools"][0]["function"]["strict"] is True  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_with_structured_output_binds_the_right_request(method) -> None:
    runnable = make().with_structured_output(GetWeather, method=method)
    bound = runnable.first.kwargs  # type: ignore[attr-defined]
    if method == "json_schema":
        assert bound["response_format"]["type"] == "json_schema"
        assert bound["response_format"]["json_schema"]["schema"]["properties"]["city"]
    elif method == "json_mode":
        assert bound["response_format"] == {"type": "json_object"}
    else:
        assert bound["tool_choice"] == {"type": "function", "function": {"name": "GetWeather"}}
    assert bound["ls_structured_output_format"]["kwargs"]["method"] == method


def test_with_structured_output_rejects_bad_method() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        make().with_structured_output(GetWeather, method="xml")  # type: ignore[arg-type]


def test_ls_params_honour_per_call_model() -> None:
    llm = make(model="m1", temperature=0.3, max_tokens=9)
    params = llm._get_ls_params(model="m2", stop=["x"])
    assert params["ls_provider"] == "vllm-autoscale"
    assert params["ls_model_name"] == "m2"
    assert params["ls_temperature"] == 0.3 and params["ls_max_tokens"] == 9
    assert params["ls_stop"] == ["x"]


@pytest.mark.filterwarnings("ignore:The function `load` is in beta")
def test_serialization_round_trip_keeps_secret_out() -> None:
    llm = make(model="m", api_key="sk-hidden", temperature=0.1)
    text = dumps(llm)
    assert "sk-hidden" not in text
    assert dumpd(llm)["kwargs"]["api_key"] == {
        "lc": 1,
        "type": "secret",
        "id": ["VLLM_AUTOSCALE_API_KEY"],
    }
    revived = load(
        json.loads(text),
        secrets_map={"VLLM_AUTOSCALE_API_KEY": "sk-hidden"},
        valid_namespaces=["langchain_vllm_autoscale"],
        allowed_objects=[ChatVLLMAutoscale],
    )
    assert isinstance(revived, ChatVLLMAutoscale)
    assert revived.model == "m" and revived.temperature == 0.1
    assert revived.api_key is not None and revived.api_key.get_secret_value() == "sk-hidden"
