"""Streamed tool calls equal non-streamed ones, and their arguments fit the tool's schema.

vLLM's streamed tool-call paths have a record of losing or cutting arguments (vllm-project/vllm
#9693, #15274, #21046, #28297). This sweep sends every case to the live wrapper at temperature
0 twice, once whole and once streamed, at the HTTP level (httpx, the SSE deltas concatenated
per call ``index`` as the OpenAI SDK does) and through ``ChatVLLMAutoscale`` (``invoke`` against
the ``stream`` chunks summed), and compares the tool calls: names, and arguments as parsed JSON
(ids differ by design). The arguments must also validate against the tool's JSON schema.

The four answers of a case (HTTP whole and streamed, ``invoke`` and ``stream``) are asked for
at once, one case at a time (the ``sweep`` fixture, shared by both tests): the engine decodes
them in the same batches, so a case costs about one generation instead of four (the sweep took
~270 s one request at a time). Cases are never run side by side: bf16 greedy decoding on CPU
depends on what a sequence is batched with (measured: with 16 requests from four cases in
flight, one case's streamed answer differed from its whole one), while the four identical
requests of one case see the same batches.

The 135M model never picks a tool on ``tool_choice="auto"``, so every case forces one:
``"required"`` or a named function; it also never makes a second call, so several calls in
one stream are covered offline (``tests/unit_tests/wrapper/test_tool_stream.py``).

Straight from vLLM (the wrapper without ``deploy/wrapper/serving/tool_stream.py``) 35 of these 38
cases match: where the non-streamed answer has no call (cut by ``max_tokens``, or
``</tool_call>`` written inside a string), the stream still has one, with arguments that are
not JSON; LangChain reads them leniently into a call with arguments missing. The wrapper now
sends each call whole once its arguments are complete JSON, and an unfinished one as text, so
every case matches. A case with no call in either answer must say why (``Outcome.why_no_call``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk

from langchain_vllm_autoscale import ChatVLLMAutoscale

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _tool(name: str, description: str, properties: dict[str, Any], **extra: Any) -> dict:
    parameters = {"type": "object", "properties": properties, "required": list(properties)}
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters | extra},
    }


_STR = {"type": "string"}
TOOLS: dict[str, dict[str, Any]] = {
    t["function"]["name"]: t
    for t in [
        _tool("get_weather", "Get the current weather in a city.", {"city": _STR}),
        _tool(
            "get_forecast",
            "Get the weather forecast for a city in a temperature unit.",
            {
                "city": _STR,
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
            },
        ),
        _tool("get_time", "Get the local time in a city.", {"city": _STR}),
        _tool(
            "add_numbers",
            "Add two numbers.",
            {"a": {"type": "number"}, "b": {"type": "number"}},
        ),
        _tool(
            "set_alarm",
            "Set an alarm clock.",
            {
                "hour": {"type": "integer", "minimum": 0, "maximum": 23},
                "minute": {"type": "integer", "minimum": 0, "maximum": 59},
                "enabled": {"type": "boolean"},
            },
        ),
        _tool(
            "create_user",
            "Create a user account with a postal address.",
            {
                "name": _STR,
                "age": {"type": "integer"},
                "address": {
                    "type": "object",
                    "properties": {"street": _STR, "city": _STR, "zip": _STR},
                    "required": ["street", "city", "zip"],
                },
            },
        ),
        _tool(
            "tag_items",
            "Attach tags to a document.",
            {"document": _STR, "tags": {"type": "array", "items": _STR, "minItems": 1}},
        ),
        _tool(
            "place_order",
            "Place an order for products.",
            {
                "customer": _STR,
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {"sku": _STR, "quantity": {"type": "integer"}},
                        "required": ["sku", "quantity"],
                    },
                },
            },
        ),
        _tool(
            "search_products",
            "Search the product catalogue.",
            {
                "query": _STR,
                "filters": {
                    "type": "object",
                    "properties": {
                        "category": {"type": "string", "enum": ["books", "music", "games"]},
                        "in_stock": {"type": "boolean"},
                        "max_price": {"type": "number"},
                    },
                    "required": ["category", "in_stock", "max_price"],
                },
            },
        ),
        _tool(
            "translate",
            "Translate a text into another language.",
            {"text": _STR, "target": {"type": "string", "enum": ["fr", "de", "es", "ja"]}},
        ),
        _tool("create_customer", "Create a customer record.", {"customer_name": _STR}),
        _tool(
            "send_email",
            "Send an email.",
            {"to": _STR, "subject": _STR, "body": _STR},
        ),
    ]
}

LONG_BODY = (
    "Dear team, thank you all for the hard work this quarter. Revenue grew by twelve percent, "
    "the new warehouse in Lyon opened on time, and customer complaints fell to the lowest level "
    "we have recorded. Next quarter we will focus on the mobile app, the loyalty programme and "
    "hiring two more engineers for the platform group. Please send me your plans by Friday."
)


@dataclass(frozen=True)
class Case:
    id: str
    prompt: str
    tools: tuple[str, ...]
    choice: str = "required"
    """"required" or the name of the tool to force."""
    parallel: bool | None = None
    max_tokens: int = 200

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": self.prompt}],
            "tools": [TOOLS[name] for name in self.tools],
            "tool_choice": (
                self.choice
                if self.choice == "required"
                else {"type": "function", "function": {"name": self.choice}}
            ),
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        if self.parallel is not None:
            body["parallel_tool_calls"] = self.parallel
        return body


W, F, T = ("get_weather",), ("get_forecast",), ("get_time",)
ORDER = ("place_order",)
CASES: list[Case] = [
    # flat string arguments
    Case("flat-paris", "What is the weather in Paris?", W),
    Case("flat-ny", "Is it raining in New York City right now?", W),
    Case("flat-named", "Tell me the weather in Buenos Aires.", W, choice="get_weather"),
    # enums and integers
    Case("enum-celsius", "Forecast for Berlin for 3 days in celsius.", F),
    Case("enum-fahrenheit", "Give me a 7 day forecast for Miami in fahrenheit.", F),
    Case("enum-named", "Five day forecast for Tokyo, metric please.", F, choice="get_forecast"),
    # numbers
    Case("numbers-int", "Add 17 and 25.", ("add_numbers",)),
    Case("numbers-float", "What is 3.75 plus -1.5?", ("add_numbers",)),
    Case("numbers-big", "Add 1234567 and 7654321.", ("add_numbers",), choice="add_numbers"),
    # integers and booleans
    Case("bool-on", "Set an alarm for 7:30 and turn it on.", ("set_alarm",)),
    Case("bool-off", "Create a disabled alarm at 22:05.", ("set_alarm",)),
    Case("bool-named", "Wake me at 6:00 tomorrow.", ("set_alarm",), choice="set_alarm"),
    # nested objects
    Case(
        "nested-user",
        "Create a user Alice Smith, 34, living at 12 High Street, London, zip E1 6AN.",
        ("create_user",),
        max_tokens=240,
    ),
    Case(
        "nested-user-named",
        "Sign up Bob Jones, aged 51, address 400 Market St, San Francisco 94105.",
        ("create_user",),
        choice="create_user",
        max_tokens=240,
    ),
    Case(
        "nested-search",
        "Find books about sailing under 20 dollars that are in stock.",
        ("search_products",),
        max_tokens=240,
    ),
    Case(
        "nested-search-named",
        "Look for board games, any stock status, at most 55.5.",
        ("search_products",),
        choice="search_products",
        max_tokens=240,
    ),
    # arrays
    Case(
        "array-tags",
        "Tag the document 'Q3 report' with finance, quarterly and draft.",
        ("tag_items",),
    ),
    Case(
        "array-tags-named",
        "Tag the photo 'holiday.jpg' with the tags beach and summer.",
        ("tag_items",),
        choice="tag_items",
    ),
    Case(
        "array-objects",
        "Order 2 of SKU A-100 and 5 of SKU B-200 for customer Carol.",
        ORDER,
        max_tokens=240,
    ),
    Case(
        "array-objects-named",
        "Customer Dave orders sku X9, quantity 3, and sku Y7, quantity 1.",
        ORDER,
        choice="place_order",
        max_tokens=240,
    ),
    # unicode and escapes
    Case("unicode-cjk", "Create a customer named '你好啊集团'.", ("create_customer",)),
    Case("unicode-accents", "Weather in São Paulo and Zürich?", W, choice="get_weather"),
    Case("unicode-translate", "Translate 'Grüße aus Köln — schön!' into Japanese.", ("translate",)),
    Case(
        "unicode-emoji",
        "Create a customer called 'Café ☕ Ünïcødé 🚀'.",
        ("create_customer",),
        choice="create_customer",
    ),
    Case("punctuation", 'Create a customer named "Smith & Sons".', ("create_customer",)),
    Case("quotes", 'Translate into French: She said "yes".', ("translate",)),
    # long strings
    Case(
        "long-translate",
        "Translate into German: The new warehouse in Lyon opened on time, and customer "
        "complaints fell to the lowest level we have recorded.",
        ("translate",),
        choice="translate",
        max_tokens=300,
    ),
    # The model writes "</tool_call>" inside the body: vLLM's hermes parser, streamed or not,
    # ends the call there (see tests/unit_tests/recorded_tool_streams.json).
    Case(
        "long-email",
        f"Email ceo@example.com with subject 'Quarterly update' and this body: {LONG_BODY}",
        ("send_email",),
        max_tokens=400,
    ),
    # several tools, one named
    Case("multi-named-time", "What time is it in Sydney?", W + T, choice="get_time"),
    Case("multi-named-weather", "Weather in Cairo?", W + T + F, choice="get_weather"),
    Case(
        "multi-named-tags",
        "Tag the photo 'holiday.jpg' with the tags beach and summer.",
        ("get_weather", "tag_items", "send_email"),
        choice="tag_items",
    ),
    Case("multi-required", "What time is it in Madrid?", W + T),
    # several calls in one answer (the 135M model makes one: see the report)
    Case(
        "parallel-two-cities", "Get the weather in Paris and the weather in Rome.", W, parallel=True
    ),
    Case(
        "parallel-two-tools",
        "Get the weather in Oslo and the local time in Lima.",
        W + T,
        parallel=True,
    ),
    Case(
        "parallel-three",
        "Call get_weather three times: for Madrid, for Lisbon, and for Athens.",
        W,
        parallel=True,
        max_tokens=300,
    ),
    Case("parallel-off", "Get the weather in Paris and the weather in Rome.", W, parallel=False),
    # cut by max_tokens inside the arguments
    Case(
        "cut-nested",
        "Create a user Alice Smith, 34, living at 12 High Street, London.",
        ("create_user",),
        max_tokens=20,
    ),
    Case(
        "cut-long-string",
        f"Email ceo@example.com with subject 'Quarterly update' and this body: {LONG_BODY}",
        ("send_email",),
        choice="send_email",
        max_tokens=40,
    ),
]


# -- comparing --------------------------------------------------------------------------------

Calls = list[tuple[str, Any]]
"""Tool calls as (name, arguments parsed from JSON); unparsable arguments stay a string."""


def _parsed(arguments: Any) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        return json.loads(arguments)
    except (TypeError, ValueError):
        return f"<not JSON> {arguments!r}"


def schema_errors(case: Case, calls: Calls) -> list[str]:
    """Why these calls do not fit the case's tools (empty: every call is valid)."""
    errors: list[str] = []
    for name, args in calls:
        if name not in case.tools or case.choice not in ("required", name):
            errors.append(f"{name!r} is not a tool this case allows")
            continue
        validator = jsonschema.Draft202012Validator(TOOLS[name]["function"]["parameters"])
        errors += [f"{name}: {e.message}" for e in validator.iter_errors(args)]
    return errors


@dataclass
class Outcome:
    case: Case
    whole: Calls
    streamed: Calls
    finish_reason: str | None
    """The non-streamed answer's."""
    content: str
    """The non-streamed answer's text."""
    extra: list[str] = field(default_factory=list)
    """Other differences (finish reason, content, usage, ids) between the two answers."""

    @property
    def match(self) -> bool:
        return self.whole == self.streamed

    @property
    def errors(self) -> list[str]:
        return schema_errors(self.case, self.streamed) + schema_errors(self.case, self.whole)

    @property
    def why_no_call(self) -> str | None:
        """Why the non-streamed answer has no call (None: it has one, or no reason shows).
        With a forced tool choice the only reasons are the model's: cut by ``max_tokens``, or
        text that vLLM's own parser does not read as a call."""
        if self.whole:
            return None
        if self.finish_reason == "length":
            return "cut by max_tokens"
        if self.content.startswith("<tool_call>"):
            return "vLLM's parser gave up (non-streamed too)"
        return None

    @property
    def ok(self) -> bool:
        return (
            self.match
            and not self.errors
            and not self.extra
            and (bool(self.whole) or self.why_no_call is not None)
        )

    def describe(self) -> str:
        return (
            f"{self.case.id}: whole={self.whole!r} streamed={self.streamed!r} "
            f"schema={self.errors} no_call={self.why_no_call} other={self.extra}"
        )


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            return
        yield json.loads(line[len("data: ") :])
    raise AssertionError("the stream ended without [DONE]")


def assemble(events: Iterator[dict[str, Any]]) -> tuple[dict[int, dict[str, str]], dict]:
    """What a plain OpenAI client builds from the deltas: each call's string fields
    concatenated per ``index``; also the content, finish reason and usage."""
    calls: dict[int, dict[str, str]] = {}
    rest: dict[str, Any] = {"content": "", "finish_reason": None, "usage": None}
    for event in events:
        if event.get("usage") and not event.get("choices"):
            rest["usage"] = event["usage"]
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            rest["content"] += delta.get("content") or ""
            rest["finish_reason"] = choice.get("finish_reason") or rest["finish_reason"]
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                function = call.get("function") or {}
                slot["id"] += call.get("id") or ""
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
    return calls, rest


def _same_text(outcome: Outcome, streamed: str) -> None:
    """The streamed text is the non-streamed one; where the answer has no call, the stream
    may give less of the call's text (what vLLM's streaming parser passed on)."""
    whole = outcome.content
    if streamed != whole and (outcome.whole or streamed not in whole):
        outcome.extra.append(f"content {streamed!r} != {whole!r}")


def http_whole(http: httpx.Client, case: Case) -> dict[str, Any]:
    """The non-streamed answer's choice."""
    response = http.post("/v1/chat/completions", json=case.body())
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


def http_streamed(http: httpx.Client, case: Case) -> tuple[dict[int, dict[str, str]], dict]:
    """The streamed answer, assembled as a plain OpenAI client does."""
    stream_body = {**case.body(), "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=stream_body) as streamed:
        assert streamed.status_code == 200, streamed.read()
        return assemble(sse_events(streamed))


def http_outcome(
    case: Case, choice: dict[str, Any], streamed: tuple[dict[int, dict[str, str]], dict]
) -> Outcome:
    calls, rest = streamed
    raw = choice["message"].get("tool_calls") or []
    ordered = [calls[i] for i in sorted(calls)]
    outcome = Outcome(
        case,
        whole=[(c["function"]["name"], _parsed(c["function"]["arguments"])) for c in raw],
        streamed=[(c["name"], _parsed(c["arguments"])) for c in ordered],
        finish_reason=choice["finish_reason"],
        content=choice["message"].get("content") or "",
    )
    if rest["finish_reason"] != choice["finish_reason"]:
        outcome.extra.append(f"finish_reason {rest['finish_reason']} != {choice['finish_reason']}")
    _same_text(outcome, rest["content"])
    if not rest["usage"]:
        outcome.extra.append("no usage chunk")
    if sorted(calls) != list(range(len(calls))) or not all(c["id"] for c in ordered):
        outcome.extra.append(f"indexes or ids: {calls}")
    return outcome


def _bound(llm: ChatVLLMAutoscale, case: Case) -> Any:
    return llm.bind_tools(
        [TOOLS[name] for name in case.tools],
        tool_choice=case.choice,
        parallel_tool_calls=case.parallel,
    )


def langchain_whole(llm: ChatVLLMAutoscale, case: Case) -> AIMessage:
    whole = _bound(llm, case).invoke(case.prompt, max_tokens=case.max_tokens)
    assert isinstance(whole, AIMessage)
    return whole


def langchain_streamed(llm: ChatVLLMAutoscale, case: Case) -> AIMessageChunk:
    """The ``stream`` chunks summed."""
    chunks = list(_bound(llm, case).stream(case.prompt, max_tokens=case.max_tokens))
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    assert isinstance(full, AIMessageChunk)
    return full


def langchain_outcome(case: Case, whole: AIMessage, full: AIMessageChunk) -> Outcome:
    outcome = Outcome(
        case,
        whole=[(c["name"], c["args"]) for c in whole.tool_calls],
        streamed=[(c["name"], c["args"]) for c in full.tool_calls],
        finish_reason=whole.response_metadata.get("finish_reason"),
        content=whole.text,
    )
    if full.response_metadata.get("finish_reason") != outcome.finish_reason:
        outcome.extra.append(f"finish_reason {full.response_metadata.get('finish_reason')}")
    _same_text(outcome, full.text)
    for label, message in (("invoke", whole), ("stream", full)):
        if message.invalid_tool_calls:
            outcome.extra.append(f"{label} invalid_tool_calls: {message.invalid_tool_calls}")
        if not all(c["id"] for c in message.tool_calls):
            outcome.extra.append(f"{label}: a tool call without an id")
    if full.usage_metadata is None:
        outcome.extra.append("stream: no usage")
    return outcome


def report(layer: str, outcomes: list[Outcome], took: float) -> str:
    n = len(outcomes)
    matches = sum(o.match for o in outcomes)
    calls = sum(len(o.whole) + len(o.streamed) for o in outcomes)
    valid = calls - sum(len(o.errors) for o in outcomes)
    no_call = [f"{o.case.id} ({o.why_no_call})" for o in outcomes if not o.whole]
    several = sum(len(o.whole) > 1 for o in outcomes)
    return (
        f"\ntool-stream integrity ({layer}): {n} cases in {took:.1f} s; streamed == whole "
        f"{matches}/{n} ({100 * matches / n:.0f}%); schema-valid calls {valid}/{calls}; "
        f"cases with no call in either answer {len(no_call)} {no_call}; cases with several "
        f"calls {several}; all checks {sum(o.ok for o in outcomes)}/{n}"
    )


def _check(layer: str, outcomes: list[Outcome], took: float) -> None:
    print(report(layer, outcomes, took))
    bad = [o.describe() for o in outcomes if not o.ok]
    for line in bad:
        print("  " + line)
    assert not bad, f"{len(bad)} of {len(outcomes)} cases differ or break the schema"


# -- the sweep --------------------------------------------------------------------------------


def test_case_list_covers_the_shapes() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    assert all(c.choice == "required" or c.choice in c.tools for c in CASES)
    assert sum(c.choice != "required" and len(c.tools) > 1 for c in CASES) >= 3
    assert sum(bool(c.parallel) for c in CASES) >= 3


@dataclass
class Sweep:
    """Every case's four answers, as futures: a failed request fails only its layer's test."""

    answers: list[tuple[Case, list[Future]]]
    took: float

    def outcomes(self, layer: str) -> list[Outcome]:
        if layer == "HTTP":
            return [http_outcome(case, f[0].result(), f[1].result()) for case, f in self.answers]
        return [langchain_outcome(case, f[2].result(), f[3].result()) for case, f in self.answers]


@pytest.fixture(scope="module")
def sweep(stack, api_key) -> Iterator[Sweep]:
    stack.wait_warm()
    llm = ChatVLLMAutoscale(base_url=stack.url, api_key=api_key, temperature=0)
    headers = {"authorization": f"Bearer {api_key}"}
    with (
        httpx.Client(base_url=stack.url, headers=headers, timeout=120) as http,
        ThreadPoolExecutor(4) as pool,
    ):
        started = time.perf_counter()
        answers = []
        for case in CASES:
            futures = [
                pool.submit(http_whole, http, case),
                pool.submit(http_streamed, http, case),
                pool.submit(langchain_whole, llm, case),
                pool.submit(langchain_streamed, llm, case),
            ]
            wait(futures)  # one case at a time: see the module's docstring
            answers.append((case, futures))
        yield Sweep(answers, time.perf_counter() - started)


# The sweep is 38 rounds of four requests at once: about a minute alone, more beside other
# test sessions (it was ~150 generations one after the other, ~270 s).
@pytest.mark.timeout(1800)
def test_streamed_tool_calls_equal_whole_over_http(sweep: Sweep) -> None:
    outcomes = sweep.outcomes("HTTP")
    _check("HTTP", outcomes, sweep.took)
    assert sum(bool(o.whole) for o in outcomes) >= 30  # the cases exercise real calls


@pytest.mark.timeout(1800)
def test_streamed_tool_calls_equal_whole_through_langchain(sweep: Sweep) -> None:
    _check("ChatVLLMAutoscale", sweep.outcomes("ChatVLLMAutoscale"), sweep.took)
