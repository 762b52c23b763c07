"""Warm-up ahead of need, from the client: wake the GPU when a run starts, not at its first
model call.

An agent often works before it calls the model (retrieval, a tool, parsing), and a
scale-to-zero engine needs 20 s to 2 minutes to boot. ``WarmupCallbackHandler`` sends the
wrapper a ``POST /warmup`` (which starts the engine and answers 202 at once) as the outermost
run starts, without waiting for the answer, so the boot overlaps with that work::

    from langchain.agents import create_agent
    from langchain_vllm_autoscale import ChatVLLMAutoscale, WarmupCallbackHandler

    llm = ChatVLLMAutoscale()
    agent = create_agent(llm, tools=[search_docs])
    warm = WarmupCallbackHandler.for_model(llm)
    agent.invoke({"messages": [...]}, config={"callbacks": [warm]})
    # or for every run of this agent: agent = agent.with_config(callbacks=[warm])

Warm-ups never block and never raise: a daemon thread sends the request (in sync and async
code alike) and a failure is logged (logger ``langchain_vllm_autoscale.warmup``, WARNING). At
most one ``POST /warmup`` per ``WARMUP_INTERVAL_S`` seconds goes to each service URL from this
process (handlers and ``ChatVLLMAutoscale(warm_up="on_init")`` share the limit), so a busy
agent does not send one per run. ``/warmup`` is idempotent and cheap, so nothing asks
``/status`` first.
"""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

import httpx
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.utils import from_env, secret_from_env

from langchain_vllm_autoscale._http import ServiceClient

# The machinery the model shares with the handler; _LIMIT, WARMUP_PATH and log are not used
# here but stay reachable as ``warmup.<name>``, where they were defined before.
from langchain_vllm_autoscale._warmup_core import (  # noqa: F401
    _LIMIT,
    WARMUP_INTERVAL_S,
    WARMUP_PATH,
    WARMUP_TIMEOUT_S,
    log,
    start_warmup,
)
from langchain_vllm_autoscale.chat_models import DEFAULT_URL, ChatVLLMAutoscale

__all__ = ["WARMUP_INTERVAL_S", "WarmupCallbackHandler", "start_warmup"]


class WarmupCallbackHandler(BaseCallbackHandler):
    """A LangChain callback handler that wakes the GPU when a run starts, for any runnable:
    an agent from ``create_agent``, a LangGraph graph, an LCEL chain.

    When a root run starts (``parent_run_id is None``: the ``invoke``, ``stream``,
    ``ainvoke``... you called, not the steps inside it) it sends ``POST /warmup`` from a daemon
    thread and returns at once; the engine then boots while the run's first steps (retrieval,
    tools) execute. Nested runs send nothing, and the per-URL rate limit (``min_interval``)
    keeps a busy agent from sending one per run.

    Give it to the root run, which hands it down to every run of the tree::

        warm = WarmupCallbackHandler.for_model(llm)
        agent.invoke(inputs, config={"callbacks": [warm]})
        agent = agent.with_config(callbacks=[warm])  # every run of this agent

    In a model's own ``callbacks`` it would see only that model's calls, which is too late.
    It cannot know whether a run will call the model: every root run it sees wakes the service.

    Sync and async runs alike: the handler runs inline (in async runs, on the event loop) and
    only starts a thread. It does not schedule a task on the running loop, on purpose: a sync
    ``invoke`` made on a thread whose loop is running (a notebook cell) blocks that loop, so a
    task would only run once the run had ended.

    Args:
        base_url: The wrapper's URL (env ``VLLM_AUTOSCALE_URL``, as for the model).
        api_key: Its key (env ``VLLM_AUTOSCALE_API_KEY``); ``/warmup`` needs one when the
            wrapper has keys.
        min_interval: At most one warm-up per this many seconds per URL, shared with every
            other handler and model of this process.
        timeout: Time-out of the warm-up request (it answers at once).
        headers: Extra headers on the request.
        http_transport: An ``httpx.BaseTransport`` for the request (tests, proxies).
    """

    run_inline = True  # starting a thread is quick: no trip through an executor
    raise_error = False

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        min_interval: float = WARMUP_INTERVAL_S,
        timeout: float = WARMUP_TIMEOUT_S,
        headers: dict[str, str] | None = None,
        http_transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = base_url or from_env("VLLM_AUTOSCALE_URL", default=DEFAULT_URL)()
        if api_key is None:
            secret = secret_from_env("VLLM_AUTOSCALE_API_KEY", default=None)()
            api_key = secret.get_secret_value() if secret else None
        client = ServiceClient(
            url, api_key=api_key, timeout=timeout, connect_timeout=min(timeout, 10.0),
            max_retries=0, headers=headers, transport=http_transport,
        )  # fmt: skip
        self._setup(client, min_interval=min_interval, timeout=timeout)

    def _setup(self, client: ServiceClient, *, min_interval: float, timeout: float) -> None:
        self.client = client
        self.min_interval = min_interval
        self.timeout = timeout
        self.fired: list[threading.Thread] = []
        """The warm-up threads this handler started, newest last (the last 16)."""

    @classmethod
    def for_model(
        cls,
        llm: ChatVLLMAutoscale | Any,
        *,
        min_interval: float = WARMUP_INTERVAL_S,
        timeout: float = WARMUP_TIMEOUT_S,
    ) -> WarmupCallbackHandler:
        """A handler for ``llm``'s service, through the model's own HTTP client (its URL,
        key, headers and transport). ``llm`` may be wrapped (``bind_tools``, ``with_config``,
        ``with_retry``...)."""
        model = llm
        while not isinstance(model, ChatVLLMAutoscale) and hasattr(model, "bound"):
            model = model.bound
        if not isinstance(model, ChatVLLMAutoscale):
            raise TypeError(f"expected a ChatVLLMAutoscale, got {type(llm).__name__}")
        handler = cls.__new__(cls)
        handler._setup(model._client, min_interval=min_interval, timeout=timeout)
        return handler

    @property
    def base_url(self) -> str:
        return self.client.base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def warm_up(self) -> threading.Thread | None:
        """Send a warm-up now, in the background (subject to the rate limit); the thread, or
        None when the rate limit skipped it."""
        thread = start_warmup(self.client, interval=self.min_interval, timeout=self.timeout)
        if thread is not None:
            self.fired.append(thread)
            del self.fired[:-16]
        return thread

    def _on_start(self, parent_run_id: UUID | None) -> None:
        if parent_run_id is None:
            self.warm_up()

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._on_start(parent_run_id)

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._on_start(parent_run_id)

    def on_retriever_start(
        self,
        serialized: dict[str, Any] | None,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._on_start(parent_run_id)
