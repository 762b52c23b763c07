"""What the client tells its caller while it waits: a cold start's progress and its retries.

The wrapper sends a stream's progress while the GPU wakes as SSE comments
(``: vllm-autoscale-progress {...}``), which other OpenAI clients skip; ``_http.py`` reads
them, and every retry it makes (429, 503, a lost connection), as ``Notice`` objects. The chat
model hands each one to ``notify``: a log line (INFO for progress, WARNING for a retry), a
LangChain custom event (``on_custom_event``: ``astream_events`` and callback handlers see
it), and, inside a LangGraph run, the graph's custom stream (``stream_mode="custom"``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManagerForLLMRun,
)
from langchain_core.callbacks.manager import (
    adispatch_custom_event,
    ahandle_event,
    dispatch_custom_event,
    handle_event,
)

try:  # LangGraph is optional: its custom stream is written only inside a graph run.
    from langgraph.config import get_stream_writer
except ImportError:  # pragma: no cover - langgraph not installed
    get_stream_writer = None  # type: ignore[assignment]

__all__ = ["PROGRESS_EVENT", "RETRY_EVENT", "Notice", "anotifier", "describe", "notifier"]

log = logging.getLogger("langchain_vllm_autoscale")

PROGRESS_EVENT = "vllm_autoscale.progress"
"""The custom event of a cold start's progress: ``state``, ``elapsed_s``, ``eta_s`` ..."""
RETRY_EVENT = "vllm_autoscale.retry"
"""The custom event of a retry: ``reason``, ``status``, ``wait_s``, ``attempt``."""


@dataclass(frozen=True)
class Notice:
    kind: Literal["progress", "retry"]
    data: dict[str, Any]

    @property
    def event(self) -> str:
        return PROGRESS_EVENT if self.kind == "progress" else RETRY_EVENT


Notify = Callable[[Notice], Any]


def describe(notice: Notice) -> str:
    """One line for a person: "GPU waking (starting): 35 s of about 60 s"."""
    d = notice.data
    if notice.kind == "retry":
        return (f"retrying in {d.get('wait_s', 0):.1f} s ({d.get('reason')}; attempt "
                f"{d.get('attempt')} of {d.get('attempts')})")  # fmt: skip
    elapsed, eta = d.get("elapsed_s") or 0.0, d.get("eta_s")
    about = f" of about {elapsed + eta:.0f} s" if eta is not None else ""
    return f"{d.get('model') or 'the model'}: GPU waking ({d.get('state')}), {elapsed:.0f} s{about}"


def _log(notice: Notice) -> None:
    if notice.kind == "retry":
        log.warning("%s", describe(notice), extra={"vllm_autoscale": notice.data})
    else:
        log.info("%s", describe(notice), extra={"vllm_autoscale": notice.data})


def _graph_write(notice: Notice) -> None:
    if get_stream_writer is None:
        return
    try:
        writer = get_stream_writer()
    except (RuntimeError, KeyError):  # not inside a LangGraph run
        return
    writer({"type": notice.event, **notice.data, "message": describe(notice)})


def _wanted(notice: Notice) -> bool:
    # A warm engine slow to its first token is not a cold start: no progress shown for it.
    return notice.kind == "retry" or notice.data.get("state") != "warm"


def _own(handlers: Any) -> list[BaseCallbackHandler]:
    """The model's own handlers (``ChatVLLMAutoscale(callbacks=[...])``)."""
    if isinstance(handlers, list):
        return [h for h in handlers if isinstance(h, BaseCallbackHandler)]
    return list(getattr(handlers, "handlers", None) or [])


def notifier(run_manager: CallbackManagerForLLMRun | None, own: Any = None) -> Notify:
    """``notify`` for a sync call: log, custom event on the run, LangGraph's custom stream.

    LangChain hands a model its run manager for ``invoke`` but not for ``stream``: a stream's
    events go to the run that called the model (a chain, an agent, a graph node), else,
    called at the top level, to the model's own ``callbacks``."""

    def notify(notice: Notice) -> None:
        if not _wanted(notice):
            return
        _log(notice)
        if run_manager is not None:
            if run_manager.handlers:
                handle_event(run_manager.handlers, "on_custom_event", "ignore_custom_event",
                             notice.event, notice.data, run_id=run_manager.run_id,
                             tags=run_manager.tags, metadata=run_manager.metadata)  # fmt: skip
        else:
            try:
                dispatch_custom_event(notice.event, notice.data)
            except RuntimeError:  # no parent run: the model's own handlers
                handle_event(_own(own), "on_custom_event", "ignore_custom_event",
                             notice.event, notice.data, run_id=uuid.uuid4())  # fmt: skip
        _graph_write(notice)

    return notify


def anotifier(run_manager: AsyncCallbackManagerForLLMRun | None, own: Any = None) -> Notify:
    """``notify`` for an async call (awaitable); see ``notifier``."""

    async def notify(notice: Notice) -> None:
        if not _wanted(notice):
            return
        _log(notice)
        if run_manager is not None:
            if run_manager.handlers:
                await ahandle_event(run_manager.handlers, "on_custom_event",
                                    "ignore_custom_event", notice.event, notice.data,
                                    run_id=run_manager.run_id, tags=run_manager.tags,
                                    metadata=run_manager.metadata)  # fmt: skip
        else:
            try:
                await adispatch_custom_event(notice.event, notice.data)
            except RuntimeError:
                await ahandle_event(_own(own), "on_custom_event", "ignore_custom_event",
                                    notice.event, notice.data, run_id=uuid.uuid4())  # fmt: skip
        _graph_write(notice)

    return notify
