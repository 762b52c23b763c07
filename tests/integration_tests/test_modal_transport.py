"""The wrapper on its Modal transport, with only the Modal call boundary replaced.

``ModalCallStandIn`` plays ``modal.Cls``: it runs the real ``VLLMInference`` class's methods
(from ``deploy/modal_app.py``) in process, pickling arguments, results and errors as Modal does
between containers. Behind them is the session's real vLLM engine; in front, a real wrapper
served over HTTP, called by the real client.
"""

from __future__ import annotations

import asyncio
import pickle
from collections import Counter
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from deploy.engine.server import InferenceServer
from deploy.settings.settings import Settings
from deploy.transports.modal import ModalTransport
from deploy.wrapper import create_app
from langchain_vllm_autoscale import ChatVLLMAutoscale
from tests.integration_tests.conftest import API_KEY, serve_on_stack

AUTH = {"authorization": f"Bearer {API_KEY}"}


def _across(value: Any) -> Any:
    """What arrives on the other side of a Modal call."""
    return pickle.loads(pickle.dumps(value))


class ModalCallStandIn:
    """Stands in for ``modal.Cls.from_name("vllm-autoscale", "VLLMInference")``."""

    def __init__(self, engine: Any) -> None:
        from deploy import modal_app

        self.user_cls = modal_app.VLLMInference._get_user_cls()
        self.engine = engine
        self.instance: Any = None
        self.calls: Counter = Counter()
        self.fail_next: Exception | None = None
        self.spawned: list[asyncio.Future[Any]] = []

    def _container(self) -> Any:
        # A container boots on the first call. Its @modal.enter would start vLLM on a GPU;
        # here the server adopts the session's running CPU engine instead.
        if self.instance is None:
            self.instance = self.user_cls()
            self.instance.server = InferenceServer(self.engine.config)
            self.instance.server.engine = self.engine
            self.instance.server.begin_serving()
        return self.instance

    def _method(self, name: str) -> SimpleNamespace:
        raw = self.user_cls.__dict__[name]._get_raw_f()

        async def call(*args: Any) -> Any:
            self.calls[name] += 1
            if self.fail_next is not None:
                error, self.fail_next = self.fail_next, None
                raise error
            try:
                result = raw(self._container(), *_across(args))
                if asyncio.iscoroutine(result):
                    result = await result
            except Exception as exc:
                raise _across(exc) from None
            return _across(result)

        async def call_gen(*args: Any) -> AsyncIterator[Any]:
            self.calls[name] += 1
            async for item in raw(self._container(), *_across(args)):
                yield _across(item)

        async def spawn(*args: Any) -> None:
            self.spawned.append(asyncio.ensure_future(call(*args)))

        return SimpleNamespace(
            remote=SimpleNamespace(aio=call),
            remote_gen=SimpleNamespace(aio=call_gen),
            spawn=SimpleNamespace(aio=spawn),
        )

    def __call__(self) -> Any:
        return SimpleNamespace(
            **{n: self._method(n) for n in ("chat", "stream", "batch", "status")}
        )


@pytest.fixture
def modal_wrapper(warm_stack):
    stand_in = ModalCallStandIn(warm_stack.transport.engine)
    transport = ModalTransport(
        stand_in, model_name=warm_stack.transport.model_name, scaledown_window=120
    )
    settings = Settings(wrapper_api_key=SecretStr(API_KEY))
    with serve_on_stack(warm_stack, create_app(transport, settings)) as url:
        yield SimpleNamespace(url=url, stand_in=stand_in)


def test_requests_cross_the_modal_boundary(modal_wrapper) -> None:
    body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
    with httpx.Client(base_url=modal_wrapper.url, headers=AUTH, timeout=120) as http:
        assert http.get("/status").json()["state"] == "cold"
        first = http.post("/v1/chat/completions", json=body)
        second = http.post("/chat", json=body)
        status = http.get("/status").json()
    assert first.status_code == 200 and first.json()["usage"]["completion_tokens"] > 0
    assert "_vllm_autoscale_container" not in first.json()
    assert first.headers["x-cold-start"] == "true"  # the container booted for this request
    assert second.headers["x-cold-start"] == "false" and second.json()["content"]
    assert status["state"] == "warm" and status["cold_starts"] == 1
    assert modal_wrapper.stand_in.calls == {"chat": 2}


def test_client_stream_and_batch_through_modal_transport(modal_wrapper) -> None:
    llm = ChatVLLMAutoscale(base_url=modal_wrapper.url, api_key=API_KEY, max_tokens=6)
    chunks = list(llm.stream("Count to three."))
    assert "".join(c.text for c in chunks) and chunks[-1].usage_metadata["output_tokens"] > 0
    results = llm.batch(["one", "two", "three", "four"])
    assert len(results) == 4 and all(r.usage_metadata for r in results)
    assert modal_wrapper.stand_in.calls == {"stream": 1, "batch": 1}  # a batch is one call


def test_errors_cross_the_boundary_cleanly(modal_wrapper) -> None:
    too_long = {"messages": [{"role": "user", "content": "word " * 5000}], "max_tokens": 4}
    ok = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with httpx.Client(base_url=modal_wrapper.url, headers=AUTH, timeout=120) as http:
        resp = http.post("/v1/chat/completions", json=too_long)
        assert resp.status_code == 400 and "context" in resp.json()["error"]["message"].lower()
        modal_wrapper.stand_in.fail_next = ConnectionError("container lost")
        resp = http.post("/v1/chat/completions", json=ok)
        assert resp.status_code == 503
        assert "container lost" in resp.json()["error"]["message"]
        assert http.post("/v1/chat/completions", json=ok).status_code == 200  # still serving
        batch = http.post("/v1/chat/completions/batch", json={"requests": [ok, too_long]})
        results = batch.json()["results"]
        assert [r["status_code"] for r in results] == [200, 400]


def test_warmup_spawns_without_waiting(modal_wrapper) -> None:
    with httpx.Client(base_url=modal_wrapper.url, headers=AUTH, timeout=30) as http:
        resp = http.post("/warmup")
    assert resp.status_code == 202 and resp.json()["model"]
    assert modal_wrapper.stand_in.calls["status"] <= 1
