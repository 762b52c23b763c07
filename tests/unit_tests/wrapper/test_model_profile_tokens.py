"""The served model's profile and token counts, offline: model presets (parsers, reasoning),
``/v1/models`` and ``POST /tokenize`` over a fake transport (never called), and the client's
lazy ``profile`` and ``get_num_tokens*`` over ``httpx.MockTransport``.

The counts' agreement with vLLM itself is checked live in
``tests/integration_tests/test_model_profile_tokens.py``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel

from deploy.core.model_info import ModelInfo
from deploy.engine.process import gpu_engine_config
from deploy.settings.settings import MODEL_PRESETS, Settings
from deploy.wrapper import create_app
from deploy.wrapper.serving.registry import describe_served_model
from deploy.wrapper.tokenize.counter import detect_content_format, vllm_conversation, vllm_tools
from langchain_vllm_autoscale import APITimeoutError, ChatVLLMAutoscale, ServiceUnavailableError
from langchain_vllm_autoscale import chat_models as chat_models_module
from tests.unit_tests.wrapper_fake import KEY, MODEL, FakeTransport, client_for, make_settings

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for call in m.tool_calls or [] %}<call>{{ call.function.arguments | tojson }}</call>"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PARTS_TEMPLATE = (  # loops over content parts: vLLM's "openai" content format
    "{% for m in messages %}{% for part in m.content %}[{{ part.text }}]{% endfor %}{% endfor %}"
)
HI = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


# -- presets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "tool_parser", "reasoning_parser"),
    [
        ("Qwen/Qwen3-8B", "hermes", "qwen3"),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", None, "deepseek_r1"),
        ("openai/gpt-oss-20b", "openai", "openai_gptoss"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama3_json", None),
    ],
)
def test_preset_engine_command_carries_its_parsers(
    model: str, tool_parser: str | None, reasoning_parser: str | None
) -> None:
    settings = Settings(model=model)
    cmd = gpu_engine_config(settings).command(8001)
    assert settings.parser_warning() is None  # a preset settles tool calling, on or off
    if tool_parser is None:
        assert "--tool-call-parser" not in cmd and "--enable-auto-tool-choice" not in cmd
    else:
        assert "--enable-auto-tool-choice" in cmd
        assert cmd[cmd.index("--tool-call-parser") + 1] == tool_parser
    if reasoning_parser is None:
        assert "--reasoning-parser" not in cmd
    else:
        assert cmd[cmd.index("--reasoning-parser") + 1] == reasoning_parser
    info = settings.model_info()
    assert (info.tool_parser, info.reasoning_parser) == (tool_parser, reasoning_parser)
    assert info.max_model_len == MODEL_PRESETS[model].max_model_len


def test_parsers_stay_settable_for_any_model() -> None:
    chosen = Settings(
        model="Qwen/Qwen3-8B", tool_call_parser="qwen3_xml", reasoning_parser="deepseek_r1"
    )
    cmd = gpu_engine_config(chosen).command(8001)
    assert cmd[cmd.index("--tool-call-parser") + 1] == "qwen3_xml"
    assert cmd[cmd.index("--reasoning-parser") + 1] == "deepseek_r1"
    assert Settings(model="Qwen/Qwen3-8B", tool_call_parser="none").tool_parser is None
    other = Settings(model="some/model", tool_call_parser="hermes", reasoning_parser="qwen3")
    assert other.model_info().capabilities()["reasoning"] is True


# -- what the wrapper knows of the model ---------------------------------------------------------


def test_model_info_comes_from_the_local_engine_config_when_there_is_one() -> None:
    from deploy.engine.process import EngineConfig

    config = EngineConfig(
        model="/models/smol", served_model_name="smol", max_model_len=2048,
        tool_call_parser="hermes", chat_template="/t.jinja",
    )  # fmt: skip
    local = type("Local", (), {"model_name": "smol", "engine_config": lambda self: config})
    info = describe_served_model(local(), make_settings(max_tokens_limit=512))
    assert info == ModelInfo(
        name="smol", max_model_len=2048, tool_parser="hermes", max_output_tokens=512,
        tokenizer="/models/smol", chat_template="/t.jinja",
    )  # fmt: skip
    # A remote transport: the settings the GPU class is built from.
    remote = describe_served_model(FakeTransport(), make_settings(model="Qwen/Qwen3-8B"))
    assert (remote.name, remote.max_model_len, remote.tokenizer) == (MODEL, 32768, "Qwen/Qwen3-8B")
    assert remote.capabilities()["reasoning_parser"] == "qwen3"


async def test_models_reports_context_and_capabilities_without_the_engine() -> None:
    fake = FakeTransport()
    app = create_app(fake, make_settings(model="Qwen/Qwen3-8B", max_tokens_limit=64))
    async with client_for(app) as client:
        response = await client.get("/v1/models")
    assert response.status_code == 200
    (card,) = response.json()["data"]
    assert card["id"] == MODEL and card["object"] == "model"
    assert card["max_model_len"] == 32768
    assert card["capabilities"] == {
        "task": "generation",
        "endpoints": ["/v1/chat/completions", "/v1/completions", "/v1/responses"],
        "tool_calling": True, "tool_parser": "hermes", "structured_output": True,
        "reasoning": True, "reasoning_parser": "qwen3", "image_inputs": False,
        "max_output_tokens": 64, "token_counting": True,
    }  # fmt: skip
    # Not a call to the engine, not even a status one.
    assert (fake.chat_bodies, fake.stream_bodies, fake.status_calls, fake.warmups) == ([], [], 0, 0)


# -- counting in the wrapper --------------------------------------------------------------------


@pytest.fixture(scope="module")
def byte_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer folder with one token per UTF-8 byte (and two special tokens): counts
    that can be worked out by hand."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"]
    )
    fast.chat_template = PARTS_TEMPLATE  # the engine's --chat-template overrides it
    path = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(path)
    (path / "chatml.jinja").write_text(CHATML)
    return path


def counting_app(tokenizer: Path | None, **settings: Any) -> tuple[Any, FakeTransport]:
    fake = FakeTransport()
    info = ModelInfo(
        name=MODEL, max_model_len=2048, tool_parser="hermes",
        tokenizer=str(tokenizer) if tokenizer else None,
        chat_template=str(tokenizer / "chatml.jinja") if tokenizer else None,
    )  # fmt: skip
    return create_app(fake, make_settings(**settings), model_info=info), fake


async def tokenize(app: Any, body: dict[str, Any], *, auth: bool = True) -> httpx.Response:
    async with client_for(app, auth=auth) as client:
        return await client.post("/tokenize", json=body)


async def test_tokenize_counts_the_templated_prompt(byte_tokenizer: Path) -> None:
    app, fake = counting_app(byte_tokenizer)
    response = await tokenize(app, {"model": MODEL, "messages": HI})
    assert response.status_code == 200, response.text
    body = response.json()
    # <|im_start|> "user\nhi" <|im_end|> "\n" <|im_start|> "assistant\n": 1+7+1+1+1+10
    assert body["count"] == 21 == len(body["tokens"])
    assert body["max_model_len"] == 2048 and body["token_strs"] is None
    no_header = await tokenize(app, {"messages": HI, "add_generation_prompt": False})
    assert no_header.json()["count"] == 21 - 11
    assert (fake.chat_bodies, fake.stream_bodies, fake.status_calls, fake.warmups) == ([], [], 0, 0)


async def test_tokenize_counts_like_vllm_renders(byte_tokenizer: Path) -> None:
    app, _ = counting_app(byte_tokenizer, max_messages=8)

    async def count(body: dict[str, Any]) -> int:
        response = await tokenize(app, body)
        assert response.status_code == 200, response.text
        return int(response.json()["count"])

    # Content parts join with newlines, as vLLM joins them for a string-format template.
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert await count({"messages": [{"role": "user", "content": parts}]}) == await count(
        {"messages": [{"role": "user", "content": "a\nb"}]}
    )
    # Tool-call arguments reach the template as an object, whether sent as text or not.
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    as_text = [*HI, {"role": "assistant", "content": None, "tool_calls": [call]}]
    as_object = [*HI, {"role": "assistant", "tool_calls": [
        {**call, "function": {"name": "f", "arguments": {"x": 1}}}]}]  # fmt: skip
    assert await count({"messages": as_text}) == await count({"messages": as_object})
    # Tools are in the prompt (as vLLM dumps them: a missing description is null).
    with_tools = await count({"messages": HI, "tools": [TOOL]})
    dumped = json.dumps(vllm_tools([TOOL]), ensure_ascii=False)
    assert '"description": null' in dumped
    assert with_tools == await count({"messages": HI}) + len(f"<tools>{dumped}</tools>")
    # Unicode counts by bytes here: the tokenizer's own rule, nothing approximated.
    uni = await count({"messages": [{"role": "user", "content": "日本"}]})
    assert uni == 21 - 2 + len("日本".encode())
    # A plain prompt: vLLM's other /tokenize shape.
    response = await tokenize(app, {"prompt": "héllo", "add_special_tokens": False})
    assert response.json()["count"] == 6
    strs = await tokenize(app, {"prompt": "ab", "return_token_strs": True})
    assert strs.json()["token_strs"] == ["a", "b"]


def test_vllm_conversation_matches_vllms_preprocessing() -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "s1"}, "s2"]},
        {"role": "assistant", "tool_calls": [], "reasoning": "hmm", "name": "bot"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}},
            {"id": "d", "type": "function", "function": {"name": "g", "arguments": "not json"}}]},
        {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "ok"}]},
    ]  # fmt: skip
    assert vllm_conversation(messages, "string") == [
        {"role": "system", "content": "s1\ns2"},
        {"role": "assistant", "content": "", "reasoning": "hmm", "reasoning_content": "hmm",
         "name": "bot"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}},
            {"id": "d", "type": "function", "function": {"name": "g", "arguments": {}}}]},
        {"role": "tool", "content": "ok", "tool_call_id": "c"},
    ]  # fmt: skip
    assert vllm_conversation(HI, "openai") == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    ]


def test_content_format_is_detected_from_the_template() -> None:
    assert detect_content_format(PARTS_TEMPLATE) == "openai"
    assert detect_content_format(CHATML) == "string"
    aliased = (
        "{% set msgs = messages[1:] %}"
        "{% for m in msgs %}{% for c in m['content'] %}{% endfor %}{% endfor %}"
    )
    assert detect_content_format(aliased) == "openai"
    for shipped in ("chatml_tools.jinja", "llama3.1_json_tools.jinja"):
        assert (
            detect_content_format((Path("deploy/chat_templates") / shipped).read_text()) == "string"
        )
    assert detect_content_format("{% if %}") == "string"  # unparsable: vLLM's default


async def test_tokenize_uses_the_tokenizers_template_without_an_engine_template(
    byte_tokenizer: Path,
) -> None:
    fake = FakeTransport()
    info = ModelInfo(name=MODEL, max_model_len=2048, tokenizer=str(byte_tokenizer))
    app = create_app(fake, make_settings(), model_info=info)
    response = await tokenize(app, {"messages": HI})
    # The tokenizer's own template loops over content parts: "[hi]" is 4 bytes.
    assert response.status_code == 200 and response.json()["count"] == 4


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/i.png"}}]}]},
         400, "messages.0.content"),
        ({"messages": HI, "tools": [{"type": "function"}]}, 400, "tools.0"),
        ({"messages": HI, "continue_final_message": True}, 400, "continue_final_message"),
        ({"messages": HI, "chat_template_kwargs": {"tokenize": True}}, 400,
         "chat_template_kwargs"),
        ({"messages": HI, "model": "other/model"}, 404, "model"),
        ({"messages": HI * 5}, 422, "messages"),
        ({"messages": HI, "stream": True}, 422, "stream"),
        ({"promt": "typo"}, 422, "prompt"),
    ],
)  # fmt: skip
async def test_tokenize_rejects_what_it_cannot_count(
    byte_tokenizer: Path, body: dict[str, Any], status: int, param: str
) -> None:
    app, _ = counting_app(byte_tokenizer)
    response = await tokenize(app, body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


async def test_tokenize_needs_the_key(byte_tokenizer: Path) -> None:
    app, _ = counting_app(byte_tokenizer)
    assert (await tokenize(app, {"messages": HI}, auth=False)).status_code == 401


async def test_tokenize_counts_under_the_caller_s_limits(byte_tokenizer: Path) -> None:
    from pydantic import SecretStr

    keys = [{"name": "once", "key": "once-" + "o" * 40, "rpm": 1},
            {"name": "broke", "key": "broke-" + "b" * 40, "monthly_budget_usd": 0}]  # fmt: skip
    app, fake = counting_app(byte_tokenizer, api_keys=SecretStr(json.dumps(keys)))
    asgi = httpx.ASGITransport(app=app)
    for entry, limit in ((keys[0], "rpm"), (keys[1], "monthly_budget_usd")):
        headers = {"Authorization": f"Bearer {entry['key']}"}
        async with httpx.AsyncClient(transport=asgi, base_url="http://w", headers=headers) as c:
            if limit == "rpm":
                assert (await c.post("/tokenize", json={"messages": HI})).status_code == 200
            refused = await c.post("/tokenize", json={"messages": HI})
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["type"] == limit and refused.headers["retry-after"]
    for _ in range(3):  # the admin key has no limits
        assert (await tokenize(app, {"prompt": "hi"})).status_code == 200
    assert (fake.chat_bodies, fake.warmups) == ([], 0)


async def test_tokenize_answers_501_when_the_wrapper_has_no_tokenizer(
    byte_tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, fake = counting_app(None)
    response = await tokenize(app, {"messages": HI})
    assert response.status_code == 501
    assert "tokenizer" in response.json()["error"]["message"]

    app, fake = counting_app(byte_tokenizer)
    monkeypatch.setitem(sys.modules, "transformers", None)  # a wrapper image without it
    response = await tokenize(app, {"messages": HI})
    assert response.status_code == 501
    error = response.json()["error"]
    assert error["type"] == "not_implemented_error" and "'transformers'" in error["message"]
    assert (fake.chat_bodies, fake.warmups) == ([], 0)


async def test_tokenize_refuses_models_vllm_renders_with_harmony(
    byte_tokenizer: Path, tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / "gpt-oss"
    shutil.copytree(byte_tokenizer, folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_oss"}))
    info = ModelInfo(name=MODEL, max_model_len=2048, tokenizer=str(folder))
    response = await tokenize(create_app(FakeTransport(), make_settings(), model_info=info), {
        "messages": HI
    })  # fmt: skip
    assert response.status_code == 501
    assert "Harmony" in response.json()["error"]["message"]


def test_openapi_documents_tokenize_with_resolvable_refs(byte_tokenizer: Path) -> None:
    import re

    app, _ = counting_app(byte_tokenizer)
    text = json.dumps(app.openapi())
    post = app.openapi()["paths"]["/tokenize"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert {"messages", "tools"} <= set(schema["anyOf"][0]["properties"])
    assert "prompt" in schema["anyOf"][1]["properties"]
    assert {"200", "401", "501"} <= set(post["responses"])
    refs = re.findall(r'"\$ref": ?"#/components/schemas/([^"]+)"', text)
    assert all(name in app.openapi()["components"]["schemas"] for name in refs)
    assert "#/$defs/" not in text


# -- the client ---------------------------------------------------------------------------------

MODELS_ANSWER = {
    "object": "list",
    "data": [{
        "id": MODEL, "object": "model", "max_model_len": 2048,
        "capabilities": {"tool_calling": True, "tool_parser": "hermes",
                         "structured_output": True, "reasoning": False,
                         "reasoning_parser": None, "image_inputs": False,
                         "max_output_tokens": 1024, "token_counting": True},
    }],
}  # fmt: skip


class Recorder:
    """A mock wrapper: answers by path, records each request's path and JSON body."""

    def __init__(self, **answers: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.url.path, body))
        key = request.url.path.strip("/").replace("/", "_")
        if key not in self.answers:
            return httpx.Response(404, json={"error": {"message": "no route"}})
        return self.answers[key](request)

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


def llm_for(recorder: Recorder, **kwargs: Any) -> ChatVLLMAutoscale:
    return ChatVLLMAutoscale(
        base_url="http://wrapper", api_key=KEY, http_transport=httpx.MockTransport(recorder),
        max_retries=3, **kwargs,
    )  # fmt: skip


def test_profile_is_fetched_once_on_first_read_and_maps_to_langchain_keys() -> None:
    recorder = Recorder(v1_models=lambda _: httpx.Response(200, json=MODELS_ANSWER))
    llm = llm_for(recorder)
    assert recorder.requests == []  # constructing stays offline
    profile = llm.profile
    assert profile == {
        "name": MODEL, "text_inputs": True, "text_outputs": True,
        "max_input_tokens": 2048, "max_output_tokens": 1024,
        "tool_calling": True, "tool_choice": True, "tool_call_streaming": True,
        "structured_output": True, "reasoning_output": False,
        "image_inputs": False, "image_url_inputs": False, "temperature": True,
    }  # fmt: skip
    assert llm.profile is profile and recorder.paths() == ["/v1/models"]
    assert "profile" not in llm.model_dump()  # excluded, as langchain-core declares it
    assert llm.model_copy().profile == profile and recorder.paths() == ["/v1/models"]


def test_a_given_profile_is_kept_and_nothing_is_fetched() -> None:
    recorder = Recorder()
    llm = llm_for(recorder, profile={"max_input_tokens": 10})
    assert llm.profile == {"max_input_tokens": 10} and recorder.requests == []
    llm.profile = {"max_input_tokens": 20}
    assert llm.profile == {"max_input_tokens": 20} and recorder.requests == []


def test_an_unreachable_service_means_no_profile_not_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    recorder = Recorder(v1_models=refuse)
    llm = llm_for(recorder)
    assert llm.profile is None and llm.profile is None
    assert recorder.paths() == ["/v1/models"]  # no retry storm: asked again only later
    monkeypatch.setattr(chat_models_module, "PROFILE_RETRY_S", 0.0)
    recorder.answers["v1_models"] = lambda _: httpx.Response(200, json=MODELS_ANSWER)
    assert llm.profile is not None and llm.profile["max_input_tokens"] == 2048


def test_a_plain_vllm_server_gives_the_context_length_only() -> None:
    plain = {"data": [{"id": MODEL, "object": "model", "max_model_len": 4096}]}
    llm = llm_for(Recorder(v1_models=lambda _: httpx.Response(200, json=plain)))
    assert llm.profile == {
        "name": MODEL, "text_inputs": True, "text_outputs": True, "max_input_tokens": 4096
    }  # fmt: skip


def test_a_model_the_service_does_not_serve_has_no_profile() -> None:
    llm = llm_for(
        Recorder(v1_models=lambda _: httpx.Response(200, json=MODELS_ANSWER)), model="x/y"
    )
    assert llm.profile is None


class Person(BaseModel):
    name: str
    age: int


def test_create_agent_takes_the_provider_strategy_from_the_profile() -> None:
    from langchain.agents import create_agent

    answer = {
        "id": "c", "object": "chat.completion", "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": '{"name": "Ada", "age": 36}'}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14},
    }  # fmt: skip
    recorder = Recorder(
        v1_models=lambda _: httpx.Response(200, json=MODELS_ANSWER),
        v1_chat_completions=lambda _: httpx.Response(200, json=answer),
    )
    agent = create_agent(llm_for(recorder), tools=[], response_format=Person)
    result = agent.invoke({"messages": [HumanMessage("Ada Lovelace, 36")]})
    assert result["structured_response"] == Person(name="Ada", age=36)
    (body,) = [body for path, body in recorder.requests if path == "/v1/chat/completions"]
    # json_schema constrained decoding, not a forced "Person" tool call.
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["properties"].keys() == {"name", "age"}
    assert "tools" not in body and "tool_choice" not in body


def count_answer(count: int) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(
        200, json={"count": count, "max_model_len": 2048, "tokens": list(range(count))}
    )


def test_get_num_tokens_from_messages_asks_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_core.language_models import base

    def no_gpt2() -> None:
        raise AssertionError("fell back to GPT-2")

    monkeypatch.setattr(base, "get_tokenizer", no_gpt2)
    recorder = Recorder(tokenize=count_answer(57))
    llm = llm_for(recorder, model=MODEL, extra_body={"chat_template_kwargs": {"x": 1}})
    messages = [
        SystemMessage("Be brief."),
        HumanMessage("Weather in Paris?"),
        AIMessage("", tool_calls=[{"id": "c1", "name": "get_weather", "args": {"city": "Paris"}}]),
        ToolMessage("sunny", tool_call_id="c1"),
    ]

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    assert llm.get_num_tokens_from_messages(messages, tools=[get_weather]) == 57
    ((path, body),) = recorder.requests
    assert path == "/tokenize" and body["model"] == MODEL
    assert body["add_generation_prompt"] is True and body["chat_template_kwargs"] == {"x": 1}
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool"]
    assert body["messages"][2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert llm.get_num_tokens_from_messages(messages[:2]) == 57
    assert "tools" not in recorder.requests[-1][1]

    assert llm.get_num_tokens("hello world") == 57
    assert llm.get_token_ids("hello world") == list(range(57))
    assert recorder.requests[-1][1] == {
        "prompt": "hello world", "add_special_tokens": False, "model": MODEL
    }  # fmt: skip


def test_token_counts_fail_clearly_and_fast_instead_of_guessing() -> None:
    not_here = {"error": {"message": "this wrapper cannot count tokens: no 'transformers'",
                          "type": "not_implemented_error", "code": 501}}  # fmt: skip
    recorder = Recorder(tokenize=lambda _: httpx.Response(501, json=not_here))
    llm = llm_for(recorder)
    with pytest.raises(ServiceUnavailableError, match="cannot count tokens"):
        llm.get_num_tokens("hi")
    assert recorder.paths() == ["/tokenize"]  # one attempt: a 5xx here is not a cold start

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    recorder = Recorder(tokenize=slow)
    with pytest.raises(APITimeoutError, match="/tokenize"):
        llm_for(recorder).get_num_tokens_from_messages([HumanMessage("hi")])
    assert recorder.paths() == ["/tokenize"]


def test_custom_token_ids_still_win() -> None:
    recorder = Recorder()
    llm = llm_for(recorder, custom_get_token_ids=lambda text: [1] * len(text))
    assert llm.get_num_tokens("abc") == 3 and llm.get_token_ids("ab") == [1, 1]
    assert recorder.requests == []


async def test_each_served_model_and_adapter_has_its_own_profile_from_the_wrapper() -> None:
    """A wrapper over two models and an adapter: ``model=`` picks the card, ``None`` the
    default (the first); the adapter gets its base's capabilities."""
    from deploy.wrapper import create_app
    from tests.unit_tests.wrapper_fake import FakeTransport, make_settings

    entries = [{"name": "small", "max_model_len": 1024},
               {"name": "big", "max_model_len": 4096, "adapters": {"sql": "/a/sql"}}]  # fmt: skip
    app = create_app(
        {"small": FakeTransport("small"), "big": FakeTransport("big")},
        make_settings(models=json.dumps(entries), max_tokens_limit=512),
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://wrapper") as client:  # fmt: skip
        answer = (await client.get("/v1/models", headers={"authorization": f"Bearer {KEY}"})).json()
    profiles = {
        model: chat_models_module._profile_from_models(answer, model)
        for model in (None, "small", "big", "sql")
    }
    assert profiles[None] == profiles["small"]
    assert profiles["small"]["name"] == "small" and profiles["big"]["name"] == "big"
    assert profiles["sql"]["name"] == "sql"
    assert profiles["sql"]["max_input_tokens"] == profiles["big"]["max_input_tokens"]
    assert profiles["small"]["max_input_tokens"] != profiles["big"]["max_input_tokens"]
