"""Warm-up from the client, offline: ``ChatVLLMAutoscale(auto_warmup="on_init")`` and
``WarmupCallbackHandler`` send ``POST /warmup`` in the background (never blocking, never
raising), at most once per interval per URL, and the handler only when a root run starts."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import httpx
import pytest
from langchain.agents import create_agent
from langchain_core.runnables import RunnableLambda
from pydantic import SecretStr

from langchain_vllm_autoscale import ChatVLLMAutoscale, WarmupCallbackHandler, warmup

URL = "http://wrapper.test"
API_KEY = "sk-warmup-test-key-123"
ANSWER = {
    "id": "chatcmpl-1",
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
}  # fmt: skip


class Service:
    """A wrapper stand-in. ``/warmup`` can be held (``hold=True``) until ``release`` is set,
    like a slow network; ``started``/``answered`` tell where the warm-up is."""

    def __init__(self, *, hold: bool = False, warmup_status: int = 202) -> None:
        self.calls: list[tuple[str, str]] = []
        self.requests: list[httpx.Request] = []
        self.started = threading.Event()
        self.answered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.warmup_status = warmup_status
        self._lock = threading.Lock()

    def warmups(self) -> int:
        return self.calls.count(("POST", "/warmup"))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.calls.append((request.method, request.url.path))
            self.requests.append(request)
        if request.url.path == "/warmup":
            self.started.set()
            self.release.wait(10)
            self.answered.set()
            if self.warmup_status >= 400:
                return httpx.Response(self.warmup_status, json={"error": {"message": "no"}})
            return httpx.Response(self.warmup_status, json={"state": "starting"})
        if request.url.path == "/v1/chat/completions":
            json.loads(request.content)
            return httpx.Response(200, json=ANSWER)
        return httpx.Response(404, json={"detail": "Not Found"})


def warmup_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "vllm-autoscale-warmup"]


def join_warmups() -> None:
    for thread in warmup_threads():
        thread.join(10)
        assert not thread.is_alive()


@pytest.fixture(autouse=True)
def _fresh_rate_limit() -> Iterator[None]:
    warmup._LIMIT.clear()
    yield
    warmup._LIMIT.clear()


@pytest.fixture
def service() -> Iterator[Service]:
    svc = Service()
    yield svc
    svc.release.set()  # a test that failed while holding the warm-up does not hang the next
    join_warmups()


@pytest.fixture
def held() -> Iterator[Service]:
    svc = Service(hold=True)
    yield svc
    svc.release.set()
    join_warmups()


def make_llm(svc: Service, url: str = URL, **kwargs: Any) -> ChatVLLMAutoscale:
    transport = httpx.MockTransport(svc)
    return ChatVLLMAutoscale(
        base_url=url,
        api_key=SecretStr(API_KEY),
        http_transport=transport,
        http_async_transport=transport,
        **kwargs,
    )


# -- the model's option ---------------------------------------------------------------------------


def test_on_init_sends_one_warmup_without_blocking_init(held: Service) -> None:
    llm = make_llm(held, auto_warmup="on_init")
    # __init__ returned while the service still holds the request...
    assert held.started.wait(5)
    assert not held.answered.is_set()
    held.release.set()
    assert held.answered.wait(5)
    join_warmups()
    assert held.calls == [("POST", "/warmup")]  # exactly one, and nothing asked /status
    assert held.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert llm.auto_warmup == "on_init"


def test_never_is_the_default_and_sends_nothing(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Any] = []
    monkeypatch.setattr("langchain_vllm_autoscale.chat_models.start_warmup", started.append)
    llm = make_llm(service)
    assert llm.auto_warmup == "never"
    assert started == [] and service.calls == []
    make_llm(service, auto_warmup="on_init")
    assert len(started) == 1  # the same spy sees the option when it is set


def test_the_option_is_validated(service: Service) -> None:
    with pytest.raises(ValueError, match="auto_warmup"):
        make_llm(service, auto_warmup="on_run_start")


@pytest.mark.parametrize(
    ("transport_error", "status", "logged"),
    [
        (httpx.ConnectError("connection refused"), None, "connection refused"),
        (None, 401, "warm-up of http://wrapper.test failed"),
        (None, 503, "warm-up of http://wrapper.test failed"),
    ],
)
def test_a_failing_warmup_never_raises_and_is_logged(
    caplog: pytest.LogCaptureFixture,
    transport_error: Exception | None,
    status: int | None,
    logged: str,
) -> None:
    svc = Service(warmup_status=status or 202)

    def answer(request: httpx.Request) -> httpx.Response:
        if transport_error is not None:
            svc.calls.append((request.method, request.url.path))
            raise transport_error
        return svc(request)

    caplog.set_level(logging.DEBUG, logger="langchain_vllm_autoscale.warmup")
    llm = ChatVLLMAutoscale(
        base_url=URL, auto_warmup="on_init", http_transport=httpx.MockTransport(answer)
    )
    join_warmups()
    assert svc.calls == [("POST", "/warmup")]  # one attempt: a warm-up is never retried
    failures = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == 1 and logged in failures[0].getMessage()
    assert llm.base_url == URL  # the model is fine and usable


def test_a_thread_that_cannot_start_is_logged_not_raised(
    service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(warmup.threading.Thread, "start", refuse)
    llm = make_llm(service, auto_warmup="on_init")
    assert isinstance(llm, ChatVLLMAutoscale) and service.calls == []
    assert any("not started" in r.getMessage() for r in caplog.records)


# -- the rate limit -------------------------------------------------------------------------------


def test_rate_limit_one_warmup_per_interval_per_url(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(warmup._LIMIT, "clock", lambda: now[0])
    make_llm(service, auto_warmup="on_init")
    make_llm(service, auto_warmup="on_init")
    make_llm(service, url=URL + "/v1/", auto_warmup="on_init")  # the same service
    handler = WarmupCallbackHandler(URL, http_transport=httpx.MockTransport(service))
    assert handler.warm_up() is None  # handlers and models share the limit
    join_warmups()
    assert service.warmups() == 1

    make_llm(service, url="http://other.test", auto_warmup="on_init")  # another service
    join_warmups()
    assert service.warmups() == 2

    now[0] += warmup.WARMUP_INTERVAL_S - 0.5
    make_llm(service, auto_warmup="on_init")
    join_warmups()
    assert service.warmups() == 2
    now[0] += 1.0  # the interval has passed
    make_llm(service, auto_warmup="on_init")
    join_warmups()
    assert service.warmups() == 3


def test_rate_limit_holds_under_concurrent_callers(service: Service) -> None:
    handler = WarmupCallbackHandler(URL, http_transport=httpx.MockTransport(service))
    barrier = threading.Barrier(8)

    def burst() -> None:
        barrier.wait()
        handler.warm_up()

    callers = [threading.Thread(target=burst) for _ in range(8)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join()
    join_warmups()
    assert service.warmups() == 1 and len(handler.fired) == 1


# -- the callback handler -------------------------------------------------------------------------


def nested_chain(log: list[str], inner_calls: int = 2) -> Any:
    inner = RunnableLambda(lambda x: x + 1, name="inner")

    def step(x: int) -> int:
        log.append("step")
        for _ in range(inner_calls):  # nested runs: they inherit the handler
            x = inner.invoke(x)
        return x

    return RunnableLambda(step, name="step") | RunnableLambda(lambda x: x * 2) | inner


def test_handler_fires_once_per_root_run_not_for_nested_runs(service: Service) -> None:
    handler = WarmupCallbackHandler(
        URL, API_KEY, min_interval=0, http_transport=httpx.MockTransport(service)
    )
    log: list[str] = []
    chain = nested_chain(log)
    assert chain.invoke(1, config={"callbacks": [handler]}) == 7
    join_warmups()
    # Seven runs started (the sequence, three steps, two nested inner calls): one warm-up.
    assert service.warmups() == 1 and len(handler.fired) == 1
    assert service.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    chain.invoke(1, config={"callbacks": [handler]})  # a second run: its own warm-up
    join_warmups()
    assert service.warmups() == 2 and log == ["step", "step"]


def test_handler_ignores_nested_starts_of_every_kind(service: Service) -> None:
    transport = httpx.MockTransport(service)
    handler = WarmupCallbackHandler(URL, min_interval=0, http_transport=transport)
    parent = uuid4()
    handler.on_chain_start({}, {}, run_id=uuid4(), parent_run_id=parent)
    handler.on_tool_start({}, "x", run_id=uuid4(), parent_run_id=parent)
    handler.on_retriever_start({}, "q", run_id=uuid4(), parent_run_id=parent)
    assert handler.fired == []
    handler.on_tool_start({}, "x", run_id=uuid4())  # a tool invoked on its own is a root run
    handler.on_retriever_start({}, "q", run_id=uuid4())
    join_warmups()
    assert service.warmups() == 2


def test_handler_does_not_make_the_run_wait(held: Service) -> None:
    handler = WarmupCallbackHandler(URL, http_transport=httpx.MockTransport(held))
    seen: list[bool] = []

    def tool_step(x: str) -> str:
        # The warm-up is already on its way while the run's first step executes.
        seen.append(held.started.wait(5))
        return x

    chain = RunnableLambda(tool_step) | RunnableLambda(str.upper)
    assert chain.invoke("go", config={"callbacks": [handler]}) == "GO"
    assert seen == [True]
    assert not held.answered.is_set()  # the run ended while the service held the warm-up
    held.release.set()
    join_warmups()
    assert held.warmups() == 1


def test_handler_with_create_agent(service: Service) -> None:
    llm = make_llm(service)
    handler = WarmupCallbackHandler.for_model(llm, min_interval=0)
    agent = create_agent(llm, tools=[], system_prompt="Be brief.")
    result = agent.invoke(
        {"messages": [{"role": "user", "content": "hi"}]}, config={"callbacks": [handler]}
    )
    join_warmups()
    assert result["messages"][-1].text == "ok"
    assert service.warmups() == 1
    assert service.calls.count(("POST", "/v1/chat/completions")) == 1
    # The same through with_config: every run of the agent warms up, once.
    warm_agent = agent.with_config(callbacks=[handler])
    warm_agent.invoke({"messages": [{"role": "user", "content": "again"}]})
    join_warmups()
    assert service.warmups() == 2


def test_for_model_uses_the_models_client_through_wrappers(service: Service) -> None:
    llm = make_llm(service, url=URL + "/v1")
    bound = llm.bind_tools([]).with_config(tags=["x"])
    handler = WarmupCallbackHandler.for_model(bound)
    assert handler.client is llm._client and handler.base_url == URL
    handler.warm_up()
    join_warmups()
    assert service.warmups() == 1
    assert service.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    with pytest.raises(TypeError, match="ChatVLLMAutoscale"):
        WarmupCallbackHandler.for_model(RunnableLambda(lambda x: x))


def test_handler_reads_url_and_key_from_env(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_AUTOSCALE_URL", "http://env-wrapper.test/v1")
    monkeypatch.setenv("VLLM_AUTOSCALE_API_KEY", "env-key")
    handler = WarmupCallbackHandler(http_transport=httpx.MockTransport(service))
    assert handler.base_url == "http://env-wrapper.test"
    assert repr(handler) == "WarmupCallbackHandler(base_url='http://env-wrapper.test')"
    handler.warm_up()
    join_warmups()
    assert str(service.requests[0].url) == "http://env-wrapper.test/warmup"
    assert service.requests[0].headers["authorization"] == "Bearer env-key"


# -- async runs -----------------------------------------------------------------------------------


async def test_async_run_fires_once_and_never_awaits_the_warmup(held: Service) -> None:
    handler = WarmupCallbackHandler(URL, min_interval=0, http_transport=httpx.MockTransport(held))
    log: list[str] = []

    async def tool_step(x: int) -> int:
        log.append("tool")
        return x

    chain = RunnableLambda(lambda x: x, afunc=tool_step) | nested_chain(log)
    started = time.monotonic()
    assert await chain.ainvoke(1, config={"callbacks": [handler]}) == 7
    # ainvoke finished while the service still held the warm-up: the loop never waited.
    assert time.monotonic() - started < 5
    assert held.started.wait(5) and not held.answered.is_set()
    held.release.set()
    join_warmups()
    assert held.warmups() == 1 and log == ["tool", "step"]


async def test_async_agent_run_fires_once(service: Service) -> None:
    llm = make_llm(service)
    agent = create_agent(llm, tools=[])
    handler = WarmupCallbackHandler.for_model(llm, min_interval=0)
    result = await agent.ainvoke(
        {"messages": [{"role": "user", "content": "hi"}]}, config={"callbacks": [handler]}
    )
    join_warmups()
    assert result["messages"][-1].text == "ok"
    assert service.warmups() == 1 and len(handler.fired) == 1


def test_sync_run_inside_a_running_loop_still_warms_up_at_once(held: Service) -> None:
    """A notebook cell: a sync ``invoke`` on a thread whose event loop is running (and
    blocked by that invoke). The warm-up must not wait for the loop to be free."""
    import asyncio

    handler = WarmupCallbackHandler(URL, http_transport=httpx.MockTransport(held))
    seen: list[bool] = []

    def step(x: str) -> str:
        seen.append(held.started.wait(5))
        return x

    async def cell() -> str:
        return RunnableLambda(step).invoke("x", config={"callbacks": [handler]})

    assert asyncio.run(cell()) == "x"
    assert seen == [True]
    held.release.set()
    join_warmups()
    assert held.warmups() == 1
