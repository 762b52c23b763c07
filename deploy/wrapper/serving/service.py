"""Inference: from a validated request to its answer, over the engine transport.

``InferenceService`` checks the model name, prepares the engine's body (the served model's
name, the default ``max_tokens``), completes, streams and batches, and attaches what the
wrapper reports of each call (request id, cold start, queue wait, engine time, cost) as
headers and metadata. The routes stay thin; request limits are checked earlier, by the
request models themselves (``deploy/wrapper/protocol.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response

from ...core.contract import BatchResults, EngineTransport, Facts, Reply
from ...core.errors import EngineError, EngineUnavailable
from ...core.pricing import request_cost
from ...gateway import Gateway, KeyRecord
from ...gateway.cache import CacheLookup, StreamRecorder, replay_chunks
from ...gateway.gateway import Admission
from ...settings.settings import Settings
from ...transports.fallback import ColdRouter
from ..handlers import ClientGone, InvalidRequest, engine_error_response
from ..metrics import Metrics
from ..protocol import BatchRequest, ChatCompletionRequest, ChatRequest
from .accounting import StreamTally, estimate_usage, rough_usage, split_by_model
from .registry import ModelRegistry, ServedModel
from .streaming import DONE, END, HEARTBEAT, KEEP_ALIVE, PumpedStream, StreamPump, sse, sse_stream
from .tool_stream import ToolCallAssembler, wants_tool_assembly

__all__ = ["InferenceService", "Service", "cancel_on_disconnect", "get_service"]

log = logging.getLogger("vllm_autoscale.wrapper")
T = TypeVar("T")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class InferenceService:
    """One per app: the served models, the settings and the metrics the routes share."""

    def __init__(
        self,
        models: ModelRegistry,
        settings: Settings,
        metrics: Metrics,
        gateway: Gateway,
        cold: ColdRouter | None = None,
    ) -> None:
        self.models, self.settings, self.metrics = models, settings, metrics
        self.gateway, self.cold = gateway, cold
        self.transport = models.default.transport
        """The default model's transport (the seed's routes, ``/status``)."""
        self.model_name = models.default.name
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

    def check_model(self, model: str | None, param: str = "model") -> ServedModel:
        """The served model ``model`` names (404 listing what is served, when none)."""
        return self.models.resolve(model, param)[0]

    def _with_default_max_tokens(self, body: dict[str, Any]) -> dict[str, Any]:
        default = self.settings.default_max_tokens
        if default and not (body.get("max_tokens") or body.get("max_completion_tokens")):
            body["max_tokens"] = default
        return body

    def engine_body(self, req: ChatCompletionRequest, param_prefix: str = "") -> dict[str, Any]:
        """vLLM's body for an OpenAI request (after the model check): ``model`` is the name the
        routed engine knows (a model's, or an adapter's on its base)."""
        _, name = self.models.resolve(req.model, f"{param_prefix}model")
        if req.model_extra:
            _check_integers(req.model_extra, param_prefix)
        return self._with_default_max_tokens(req.to_engine(name))

    def seed_body(self, req: ChatRequest) -> dict[str, Any]:
        """vLLM's body for the seed's ``/chat`` request."""
        return self._with_default_max_tokens({**req.to_openai(), "model": self.model_name})

    # -- what each answer carries ---------------------------------------------------------------

    def meta(
        self,
        request: Request,
        facts: Facts,
        started: float,
        cache: str = "bypass",
        served_by: str = "engine",
        settings: Settings | None = None,
    ) -> dict[str, Any]:
        """What the answer reports of its call; ``settings``: the served model's (its price)."""
        priced = settings or self.settings
        engine_s = time.perf_counter() - started - facts.queue_wait_s
        # At the configured GPU price: what this request would cost on the GPU tier (the
        # fallback's own price is not known here).
        gpu_s = engine_s if served_by == "engine" else 0.0
        return {
            "cache": cache,
            "served_by": served_by,
            "request_id": request.state.request_id,
            "cold_start": facts.cold_start,
            "queue_wait_ms": round(facts.queue_wait_s * 1000, 1),
            "engine_ms": round(engine_s * 1000, 1),
            "cost": request_cost(
                gpu_s,
                facts.queue_wait_s if facts.cold_start else 0.0,
                priced.gpu_price_per_hour,
                priced.gpu_count,
            ),
        }

    @staticmethod
    def meta_headers(meta: dict[str, Any]) -> dict[str, str]:
        return {
            "x-cold-start": str(meta["cold_start"]).lower(),
            "x-queue-wait-ms": str(meta["queue_wait_ms"]),
            "x-engine-ms": str(meta["engine_ms"]),
            "x-cache": meta["cache"],
            "x-served-by": meta["served_by"],
        }

    @staticmethod
    def hit_meta(request: Request) -> dict[str, Any]:
        """A cache hit's metadata: no engine, no GPU time, no cost."""
        return {"cache": "hit", "served_by": "cache", "request_id": request.state.request_id,
                "cold_start": False,
                "queue_wait_ms": 0.0, "engine_ms": 0.0,
                "cost": {"gpu_seconds": 0.0, "usd": 0.0, "cold_start_usd": 0.0}}  # fmt: skip

    def _lookup(self, request: Request, caller: KeyRecord, body: dict[str, Any]) -> CacheLookup:
        return self.gateway.lookup(caller, body, request.headers.get("cache-control", ""))

    def route(self, body: dict[str, Any]) -> ServedModel:
        """The served model an engine body goes to (its ``model`` was resolved already)."""
        return self.models.resolve(body.get("model"))[0]

    async def _pick(self, request: Request, engine: EngineTransport) -> EngineTransport:
        """The engine, or the cold fallback while the engine is cold (by its policy)."""
        if self.cold is None:
            return engine
        return await self.cold.pick(engine, request.headers)

    def _salt(self, caller: KeyRecord, body: dict[str, Any]) -> None:
        """Per-key prefix caches (``VLLM_PREFIX_CACHE_ISOLATION=per_key``): vLLM shares cached
        prefixes only between requests with the same ``cache_salt``. The salt comes from the
        key's hash, which no other caller knows; a caller's own salt is replaced."""
        if self.settings.prefix_cache_isolation == "per_key":
            body["cache_salt"] = hashlib.sha256(b"cache-salt:" + caller.sha256.encode()).hexdigest()

    def _served(
        self,
        caller: KeyRecord,
        usage: dict | None,
        meta: dict[str, Any],
        model: str | None = None,
        estimated: bool = False,
    ) -> None:
        self.gateway.record(caller, model or self.model_name, usage, meta, estimated=estimated)
        self.metrics.count_usage(usage, caller.name)
        self.metrics.count_key(caller.name, "served")

    def _hit(self, caller: KeyRecord, model: str | None, completion: dict[str, Any]) -> None:
        """A replay in the ledger, under the model (or adapter) the request named."""
        usage = completion.get("usage")
        self.gateway.record(caller, model or self.model_name, usage, cache_hit=True)
        self.metrics.count_key(caller.name, "cache_hit")

    # -- completing -----------------------------------------------------------------------------

    async def complete(
        self, request: Request, body: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One chat completion (from the cache when it can be): the response and the call's
        metadata. The caller's limits are taken before the engine is asked."""
        caller: KeyRecord = request.state.caller
        lookup = self._lookup(request, caller, body)
        if lookup.hit is not None:
            self._hit(caller, body.get("model"), lookup.hit)
            return lookup.hit, self.hit_meta(request)
        ticket = self.gateway.admit(caller, [body])
        served = self.route(body)
        self._salt(caller, body)
        started = time.perf_counter()
        try:
            with self._tracked():
                transport = await self._pick(request, served.transport)
                reply = await cancel_on_disconnect(request, transport.chat(body))
        except BaseException:
            ticket.settle(None)
            raise
        by_engine = transport is served.transport
        cache = "miss" if lookup.store else "bypass"
        meta = self.meta(request, reply.facts or Facts(), started, cache,
                         "engine" if by_engine else "fallback", served.settings)  # fmt: skip
        # The books (limits settled, ledger, metrics, cache): once the answer is on its way.
        model = body.get("model") if by_engine else transport.model_name
        self.gateway.later(self._book, caller, ticket, reply.body, meta, model, by_engine, lookup)
        return reply.body, meta

    def _book(
        self,
        caller: KeyRecord,
        ticket: Admission,
        answer: dict[str, Any],
        meta: dict[str, Any],
        model: str | None,
        by_engine: bool,
        lookup: CacheLookup,
    ) -> None:
        usage = answer.get("usage")
        ticket.settle(_tokens(usage))
        self._served(caller, usage, meta, model)
        # Only the engine's answers are kept: a fallback's would outlive the cold start.
        if lookup.store and by_engine and self.gateway.cache is not None:
            self.gateway.cache.put(lookup.key or "", answer, streamed=False)

    async def completion_response(self, request: Request, body: dict[str, Any]) -> Response:
        result, meta = await self.complete(request, body)
        result["vllm_autoscale"] = meta
        return Response(
            orjson.dumps(result), media_type="application/json", headers=self.meta_headers(meta)
        )

    async def batch(self, request: Request, req: BatchRequest) -> tuple[dict[str, Any], dict]:
        """Many completions in one engine call; a failed item keeps its error in its slot.
        The whole batch is admitted (or refused) at once; it does not use the cache."""
        caller: KeyRecord = request.state.caller
        bodies = [self.engine_body(r, f"requests.{i}.") for i, r in enumerate(req.requests)]
        served_model = self._batch_model(bodies)
        ticket = self.gateway.admit(caller, bodies)
        for body in bodies:
            self._salt(caller, body)
        started = time.perf_counter()
        try:
            with self._tracked():
                reply = await cancel_on_disconnect(
                    request, served_model.transport.batch(bodies, req.max_concurrency)
                )
        except BaseException:
            ticket.settle(None)
            raise
        meta = self.meta(request, reply.facts or Facts(), started, settings=served_model.settings)
        items = self._items(reply.body, meta)
        answers = [item.get("response") for item in items]
        served = [a for a in answers if a is not None]
        usage = _sum_usage(r.get("usage") for r in served)
        ticket.settle(_tokens(usage))
        # Each item under the model or adapter it named; the call's cost shared by item.
        for model, group in split_by_model(bodies, answers).items():
            share = _scaled(meta, len(group) / len(served))
            group_usage = _sum_usage(r.get("usage") for r in group)
            self.gateway.record(caller, model or served_model.name, group_usage, share,
                                requests=len(group))  # fmt: skip
        self.metrics.count_usage(usage, caller.name)
        for _ in served:
            self.metrics.count_key(caller.name, "served")
        return {"object": "batch.chat.completion", "results": items,
                "vllm_autoscale": meta}, meta  # fmt: skip

    def _batch_model(self, bodies: list[dict[str, Any]]) -> ServedModel:
        """One batch is one engine call: its requests name one model (or its adapters)."""
        first = self.route(bodies[0])
        for i, body in enumerate(bodies[1:], start=1):
            if self.route(body) is not first:
                raise InvalidRequest(
                    f"a batch goes to one model: requests.{i}.model names another than "
                    f"requests.0.model ({first.name!r}); send one batch per model",
                    f"requests.{i}.model",
                )
        return first

    def _items(self, results: BatchResults, meta: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, result in enumerate(results):
            if isinstance(result, EngineError):
                out.append({"index": i, "status_code": result.status_code, **result.to_body()})
            else:
                result["vllm_autoscale"] = meta  # each answer carries the call's facts
                out.append({"index": i, "status_code": 200, "response": result})
        return out

    # -- streaming ------------------------------------------------------------------------------

    async def stream(self, request: Request, body: dict[str, Any]) -> Response:
        """An SSE response. Errors before the first chunk (bad params, overload) keep their
        HTTP status; a cold start holds the first chunk back, and the stream then opens with
        heartbeats instead."""
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        caller: KeyRecord = request.state.caller
        lookup = self._lookup(request, caller, body)
        if lookup.hit is not None:
            self._hit(caller, body.get("model"), lookup.hit)
            return self._replay(request, lookup.hit, wants_usage)
        # Usage always travels from the engine (metrics and the ledger count it); callers
        # who did not ask for the usage chunk do not get it.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        self._admit()
        ticket = self.gateway.admit(caller, [body], stream=True)
        served = self.route(body)
        self._salt(caller, body)
        started = time.perf_counter()
        try:
            transport = await self._pick(request, served.transport)
        except BaseException:
            ticket.settle(None)
            raise
        # The tally sees every chunk the engine sends, ahead of the client: a stream that ends
        # without the engine's usage is still booked (_book_unfinished).
        tally = StreamTally()
        pump = StreamPump(tally.watch(transport.stream(body)), self.settings.heartbeat_interval)
        self._streams.add(pump)
        try:
            first = await pump.get()
            if isinstance(first, Exception):  # failed before its first chunk
                raise first
        except BaseException as exc:
            self._streams.discard(pump)
            ticket.settle(None)
            await pump.aclose()
            if isinstance(exc, EngineError):  # keeps its HTTP status: nothing was sent yet
                return engine_error_response(exc)
            raise
        run = _StreamRun(caller, ticket, started, wants_usage, lookup, transport, served, body)
        run.tally = tally
        # Tool calls go out whole (see tool_stream.py); a stream without tools is not touched.
        run.tools = ToolCallAssembler() if wants_tool_assembly(body) else None
        cold = await self._cold(first, transport)
        headers = {**_SSE_HEADERS, "x-cold-start": str(cold).lower(), "x-cache": run.cache,
                   "x-served-by": run.served_by}  # fmt: skip
        events = self._events(request, pump, first, run)

        async def closed() -> None:
            self._streams.discard(pump)
            try:
                if not run.booked:  # ended before the engine's usage reached the books
                    await self._book_unfinished(request, run)
            finally:
                ticket.settle(None)  # no-op once booked

        return PumpedStream(events, pump, media_type="text/event-stream", headers=headers,
                            on_close=closed)  # fmt: skip

    def _replay(self, request: Request, completion: dict[str, Any], wants_usage: bool) -> Response:
        """A cache hit as a stream: the same chunks' shape, no engine."""
        events: list[dict[str, Any]] = list(replay_chunks(completion))
        if wants_usage:
            events.append({"id": completion.get("id"), "object": "chat.completion.chunk",
                           "created": completion.get("created"), "model": completion.get("model"),
                           "choices": [], "usage": completion.get("usage"),
                           "vllm_autoscale": self.hit_meta(request)})  # fmt: skip
        headers = {**_SSE_HEADERS, "x-cold-start": "false", "x-cache": "hit"}
        return sse_stream(events, headers)

    @staticmethod
    async def _cold(first: Any, transport: EngineTransport) -> bool:
        """Whether this stream waited for a start: its facts say, or, when it opens with a
        heartbeat (facts not known yet), the engine's state does."""
        if isinstance(first, Reply) and first.facts is not None:
            return first.facts.cold_start
        return (await transport.status()).state != "warm"

    async def _events(
        self, request: Request, pump: StreamPump, item: Any, run: _StreamRun
    ) -> AsyncIterator[bytes]:
        facts, first_token, tools = Facts(), True, run.tools
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
                if run.recorder is not None:
                    run.recorder.feed(chunk)
                if first_token and chunk.get("choices"):
                    self.metrics.ttft.observe(time.perf_counter() - run.started)
                    first_token = False
                if chunk.get("usage") and not chunk.get("choices"):
                    meta = self.meta(request, facts, run.started, run.cache, run.served_by,
                                     run.settings)  # fmt: skip
                    run.ticket.settle(_tokens(chunk["usage"]))
                    self._served(run.caller, chunk["usage"], meta, run.model)
                    run.booked = True
                    if run.wants_usage:
                        chunk["vllm_autoscale"] = meta
                        yield sse(chunk)
                else:
                    yield sse(chunk)
            item = await pump.get()
        else:
            last = tools.finish() if tools is not None else None
            if last is not None:  # the engine ended without a finish reason
                yield sse(last)
            run.store_in_cache(self.gateway)
        yield DONE

    async def _book_unfinished(self, request: Request, run: _StreamRun) -> None:
        """Book a stream that ended without its usage reaching the books: the engine's usage
        if the tally saw it, else the tokens counted from what the engine sent (estimated)."""
        tally = run.tally
        if tally is None or (tally.usage is None and not tally.pieces):
            return  # nothing was generated (failed before its first token)
        usage, estimated = tally.usage, tally.usage is None
        if usage is None:
            try:
                usage = await estimate_usage(run.body, tally, run.counter)
            except asyncio.CancelledError:  # shutting down: book it roughly, now
                self._book_stream(request, run, rough_usage(run.body, tally), True)
                raise
        self._book_stream(request, run, usage, estimated)

    def _book_stream(
        self, request: Request, run: _StreamRun, usage: dict[str, Any], estimated: bool
    ) -> None:
        facts = run.tally.facts if run.tally is not None else None
        meta = self.meta(request, facts or Facts(), run.started, run.cache, run.served_by,
                         run.settings)  # fmt: skip
        run.ticket.settle(_tokens(usage))
        self._served(run.caller, usage, meta, run.model, estimated=estimated)
        run.booked = True
        if estimated:
            log.info("booked an unfinished stream's tokens as counted by the wrapper: %s",
                     usage, extra={"request_id": request.state.request_id})  # fmt: skip


class _StreamRun:
    """What one stream carries from its admission to its end."""

    def __init__(
        self,
        caller: KeyRecord,
        ticket: Admission,
        started: float,
        wants_usage: bool,
        lookup: CacheLookup,
        transport: EngineTransport,
        served: ServedModel,
        body: dict[str, Any],
    ) -> None:
        self.caller, self.ticket, self.started = caller, ticket, started
        self.wants_usage, self.lookup, self.body = wants_usage, lookup, body
        self.tally: StreamTally | None = None
        self.booked = False
        self.counter = served.counter
        self.tools: ToolCallAssembler | None = None
        by_engine = transport is served.transport
        self.served_by = "engine" if by_engine else "fallback"
        self.model = body.get("model") if by_engine else transport.model_name
        self.settings = served.settings
        # Only the engine's answers are kept: a fallback's would outlive the cold start.
        keep = lookup.store and self.served_by == "engine"
        self.cache = "miss" if lookup.store else "bypass"
        self.recorder = StreamRecorder() if keep else None

    def store_in_cache(self, gateway: Gateway) -> None:
        """A stream that ran to its end fills the cache as a plain request would."""
        if self.recorder is not None and gateway.cache is not None and self.lookup.key:
            gateway.cache.put(self.lookup.key, self.recorder.completion(), streamed=True)


def _tokens(usage: dict[str, Any] | None) -> int | None:
    return int(usage.get("total_tokens") or 0) if usage else None


def _scaled(meta: dict[str, Any], share: float) -> dict[str, Any]:
    """``meta`` with its cost (GPU seconds and dollars) multiplied by ``share``."""
    cost = {k: v * share for k, v in (meta.get("cost") or {}).items()}
    return {**meta, "cost": cost}


def _sum_usage(usages: Any) -> dict[str, int]:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for usage in usages:
        for name in total:
            total[name] += int((usage or {}).get(name) or 0)
    return total


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
