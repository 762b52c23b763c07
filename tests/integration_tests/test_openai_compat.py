"""The wrapper's /v1 works with the openai SDK and with ChatOpenAI, unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from langchain_openai import ChatOpenAI

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def client(warm_stack, api_key) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=warm_stack.url + "/v1", api_key=api_key, max_retries=0) as c:
        yield c


def test_models_list(client) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_completion(client) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, seed=1, n=2
    )
    assert len(resp.choices) == 2 and resp.choices[0].message.content
    assert resp.usage.completion_tokens > 0 and resp.model == MODEL


def test_streaming_with_usage(client) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens > 0


def test_stream_without_usage_has_no_usage_chunk(client) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True
        )
    )
    assert all(c.choices for c in chunks)  # OpenAI sends the usage chunk only when asked


def test_tools_and_response_format(client) -> None:
    resp = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Lima?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=100,
        temperature=0,  # sampled, the small model may ramble past max_tokens inside the JSON
    )
    call = resp.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
    }
    resp = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Is the sky blue? Answer in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "num", "schema": schema}},
        max_tokens=100,
        temperature=0,
    )
    assert json.loads(resp.choices[0].message.content)["answer"] in {"yes", "no"}


def test_errors_in_openai_shape(client, warm_stack) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=4)
    assert info.value.body["param"] == "messages"
    with (
        openai.OpenAI(base_url=warm_stack.url + "/v1", api_key="wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.models.list()


def test_chat_openai_against_the_wrapper(warm_stack, api_key) -> None:
    llm = ChatOpenAI(
        base_url=warm_stack.url + "/v1", api_key=api_key, model=MODEL, max_tokens=8, max_retries=0
    )
    msg = llm.invoke("Hello")
    assert msg.content and msg.usage_metadata["output_tokens"] > 0
    chunks = list(llm.stream("Hello"))
    assert "".join(c.text for c in chunks)
