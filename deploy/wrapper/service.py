"""Inference: from a validated request to its answer, over the engine transport.

``InferenceService`` checks the model name, prepares the engine's body (the served model's
name, the default ``max_tokens``), completes, streams and batches, and attaches what the
wrapper reports of each call (request id, cold start, queue wait, engine time, cost) as
headers and metadata. The routes stay thin; request limits are checked earlier, by the
request models themselves (``deploy/protocol.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from http import HTTPStatus
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response

from ..config import Settings
from ..contract import BatchResults, EngineTransport, Facts, Reply
from ..cost import request_cost
from ..errors import EngineError, EngineUnavailable
from ..metrics import Metrics
from ..protocol import BatchRequest, ChatCompletionRequest, ChatRequest
from .handlers import ClientGone, InvalidRequest, engine_error_response
from .streaming import DONE, END, HEARTBEAT, KEEP_ALIVE, PumpedStream, StreamPump, sse
from .tool_stream import ToolCallAssembler, wants_tool_assembly

__all__ = ["InferenceService", "Service", "cancel_on_disconnect", "get_service"]

log = logging.getLogger("vllm_autoscale.wrapper")
T = TypeVar("T")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class InferenceService:
    """One per app: the transport, the settings and the metrics the inference routes share."""

    def __init__(self, transport: EngineTransport, settings: Settings, metrics: Metrics) -> None:
        self.transport, self.settings, self.metrics = transport, settings, metrics
        self.model_name = transport.model_name
        self.draining = False
        self._in_flight = 0
        self._streams: set[StreamPump] = set()

    # -- shutting down ----------------------------------------------------------------------------

    def _admit(self) -> None:
        if self.draining:
            raise EngineUnavailable("the wrapper is shutting down; send the request again",
                                    retry_after=1)  # fmt: skip

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        self._admit()
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    async def drain(self, grace: float) -> None:
        """Stop taking work; let what is in flight finish within ``grace`` seconds; then end
        the streams still open with an error event and ``[DONE]`` (clients retry them)."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while (self._in_flight or self._streams) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._streams:
            log.warning("ending %d open stream(s) at shutdown", len(self._streams))
        for pump in list(self._streams):
            pump.interrupt(EngineUnavailable(
                "the wrapper shut down before the stream finished; send the request again",
                retry_after=1,
            ))  # fmt: skip

    # -- preparing a request ---------------------------------------------------------------------

    def check_model(self, model: str | None, param: str = "model") -> None:
        if model not in (None, "", self.model_name):
            raise InvalidRequest(
                f"model {model!r} is not served here; this service serves {self.model_name!r}",
                param,
                HTTPStatus.NOT_FOUND,
            )

    def _with_default_max_tokens(self, body: dict[str, Any]) -> dict[str, Any]:
        default = self.settings.default_max_tokens
        if default and not (body.get("max_tokens") or body.get("max_completion_tokens")):
            body["max_tokens"] = default
        return body

    def engine_body(self, req: ChatCompletionRequest, param_prefix: str = "") -> dict[str, Any]:
        """vLLM's body for an OpenAI request (after the model check)."""
        self.check_model(req.model, f"{param_prefix}model")
        if req.model_extra:
            _check_integers(req.model_extra, param_prefix)
        return self._with_default_max_tokens(req.to_engine(self.model_name))

    def seed_body(self, req: ChatRequest) -> dict[str, Any]:
        """vLLM's body for the seed's ``/chat`` request."""
        return self._with_default_max_tokens({**req.to_openai(), "model": self.model_name})

    # -- what each answer carries ---------------------------------------------------------------

    def meta(self, request: Request, facts: Facts, started: float) -> dict[str, Any]:
        engine_s = time.perf_counter() - started - facts.queue_wait_s
        return {
            "request_id": request.state.request_id,
            "cold_start": facts.cold_start,
            "queue_wait_ms": round(facts.queue_wait_s * 1000, 1),
            "engine_ms": round(engine_s * 1000, 1),
            # At the configured GPU price: what this request would cost on the GPU tier.
            "cost": request_cost(
                engine_s,
                facts.queue_wait_s if facts.cold_start else 0.0,
                self.settings.gpu_price_per_hour,
                self.settings.gpu_count,
            ),
        }

    @staticmethod
    def meta_headers(meta: dict[str, Any]) -> dict[str, str]:
        return {
            "x-cold-start": str(meta["cold_start"]).lower(),
            "x-queue-wait-ms": str(meta["queue_wait_ms"]),
            "x-engine-ms": str(meta["engine_ms"]),
        }

    # -- completing -----------------------------------------------------------------------------

    async def complete(
        self, request: Request, body: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One chat completion: vLLM's response and the call's metadata."""
        started = time.perf_counter()
        with self._tracked():
            reply = await cancel_on_disconnect(request, self.transport.chat(body))
        self.metrics.count_usage(reply.body.get("usage"))
        return reply.body, self.meta(request, reply.facts or Facts(), started)

    async def completion_response(self, request: Request, body: dict[str, Any]) -> Response:
        result, meta = await self.complete(request, body)
        result["vllm_autoscale"] = meta
        return Response(
            orjson.dumps(result), media_type="application/json", headers=self.meta_headers(meta)
        )

    async def batch(self, request: Request, req: BatchRequest) -> tuple[dict[str, Any], dict]:
        """Many completions in one engine call; a failed item keeps its error in its slot."""
        bodies = [self.engine_body(r, f"requests.{i}.") for i, r in enumerate(req.requests)]
        started = time.perf_counter()
        with self._tracked():
            reply = await cancel_on_disconnect(
                request, self.transport.batch(bodies, req.max_concurrency)
            )
        meta = self.meta(request, reply.facts or Facts(), started)
        return {"object": "batch.chat.completion", "results": self._items(reply.body, meta),
                "vllm_autoscale": meta}, meta  # fmt: skip

    def _items(self, results: BatchResults, meta: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, result in enumerate(results):
            if isinstance(result, EngineError):
                out.append({"index": i, "status_code": result.status_code, **result.to_body()})
            else:
                self.metrics.count_usage(result.get("usage"))
                result["vllm_autoscale"] = meta  # each answer carries the call's facts
                out.append({"index": i, "status_code": 200, "response": result})
        return out

    # -- streaming ------------------------------------------------------------------------------

    async def stream(self, request: Request, body: dict[str, Any]) -> Response:
        """An SSE response. Errors before the first chunk (bad params, overload) keep their
        HTTP status; a cold start holds the first chunk back, and the stream then opens with
        heartbeats instead."""
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        # Usage always travels from the engine (metrics count it); callers who did not ask
        # for the usage chunk do not get it.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        self._admit()
        started = time.perf_counter()
        pump = StreamPump(self.transport.stream(body), self.settings.heartbeat_interval)
        self._streams.add(pump)
        try:
            first = await pump.get()
            if isinstance(first, Exception):  # failed before its first chunk
                raise first
        except BaseException as exc:
            self._streams.discard(pump)
            await pump.aclose()
            if isinstance(exc, EngineError):  # keeps its HTTP status: nothing was sent yet
                return engine_error_response(exc)
            raise
        headers = {**_SSE_HEADERS, "x-cold-start": str(await self._cold(first)).lower()}
        # Tool calls go out whole (see tool_stream.py); a stream without tools is not touched.
        tools = ToolCallAssembler() if wants_tool_assembly(body) else None
        events = self._events(request, pump, first, started, wants_usage, tools)
        return PumpedStream(events, pump, media_type="text/event-stream", headers=headers,
                            on_close=lambda: self._streams.discard(pump))  # fmt: skip

    async def _cold(self, first: Any) -> bool:
        """Whether this stream waited for a start: its facts say, or, when it opens with a
        heartbeat (facts not known yet), the engine's state does."""
        if isinstance(first, Reply) and first.facts is not None:
            return first.facts.cold_start
        return (await self.transport.status()).state != "warm"

    async def _events(
        self,
        request: Request,
        pump: StreamPump,
        item: Any,
        started: float,
        wants_usage: bool,
        tools: ToolCallAssembler | None = None,
    ) -> AsyncIterator[bytes]:
        facts, first_token = Facts(), True
        while item is not END:
            if item is HEARTBEAT:
                yield KEEP_ALIVE
            elif isinstance(item, EngineError):
                log.warning("stream failed: %s", item.message,
                            extra={"request_id": request.state.request_id})  # fmt: skip
                yield sse(item.to_body())
                break
            elif isinstance(item, Exception):
                raise item
            else:
                facts = item.facts or facts
                chunk = item.body if tools is None else tools.feed(item.body)
                if chunk is None:  # a tool call's piece, held until the call is whole
                    item = await pump.get()
                    continue
                if first_token and chunk.get("choices"):
                    self.metrics.ttft.observe(time.perf_counter() - started)
                    first_token = False
                if chunk.get("usage") and not chunk.get("choices"):
                    self.metrics.count_usage(chunk["usage"])
                    if wants_usage:
                        chunk["vllm_autoscale"] = self.meta(request, facts, started)
                        yield sse(chunk)
                else:
                    yield sse(chunk)
            item = await pump.get()
        else:
            last = tools.finish() if tools is not None else None
            if last is not None:  # the engine ended without a finish reason
                yield sse(last)
        yield DONE


_INT64 = (-(2**63), 2**64 - 1)


def _check_integers(fields: dict[str, Any], prefix: str) -> None:
    """Pass-through fields go to vLLM unread, but an integer past 64 bits makes it fail
    (a 500): answer 422 naming the field instead."""
    stack: list[tuple[str, Any]] = [(f"{prefix}{k}", v) for k, v in fields.items()]
    while stack:
        path, value = stack.pop()
        if isinstance(value, int) and not isinstance(value, bool):
            if not _INT64[0] <= value <= _INT64[1]:
                raise InvalidRequest(f"{path} is out of range (a 64-bit integer)", path)
        elif isinstance(value, dict):
            stack.extend((f"{path}.{k}", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}", v) for i, v in enumerate(value))


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first (frees the engine)."""
    handler = asyncio.current_task()
    gone = False

    async def watch() -> None:
        nonlocal gone
        # The body is already read, so the next message is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        if handler is not None:
            handler.cancel()

    # One watcher task; the work itself runs in the handler's task (no extra task per call).
    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            if handler is not None and hasattr(handler, "uncancel"):
                handler.uncancel()  # this cancel was ours, not the server's
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()


def get_service(request: Request) -> InferenceService:
    return request.app.state.service  # type: ignore[no-any-return]


Service = Annotated[InferenceService, Depends(get_service)]
"""A route parameter ``service: Service`` gets the app's ``InferenceService``."""
