"""The always-on wrapper: a FastAPI app in front of an engine transport.

``create_app(transport, settings)`` builds the same app locally (``LocalTransport``) and on
Modal (``ModalTransport``). The wrapper owns the HTTP concerns (auth, validation, limits,
request ids, metrics, logs, SSE heartbeats while the GPU wakes) and never needs a GPU itself:
``/``, ``/health``, ``/status`` and ``/v1/models`` answer without waking the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any, TypeVar

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deploy.config import SERVICE_NAME, SERVICE_VERSION, Settings
from deploy.cost import request_cost
from deploy.errors import EngineError, error_body
from deploy.metrics import Metrics
from deploy.protocol import BatchRequest, ChatCompletionRequest, ChatRequest, ErrorResponse
from deploy.transport import EngineTransport, RequestInfo

__all__ = ["create_app"]

log = logging.getLogger("vllm_autoscale.wrapper")

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# Documented in the OpenAPI schema, so clients (and schema fuzzers) know every answer.
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorResponse}}
_INFERENCE_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 422, 429, 503)
}
_HEARTBEAT, _END = object(), object()
_DONE = b"data: [DONE]\n\n"


class InvalidRequest(Exception):
    """A request that is well-formed JSON but breaks a limit; answered 4xx naming the field."""

    def __init__(self, message: str, param: str, status: int = HTTPStatus.UNPROCESSABLE_ENTITY):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _parse(model: type[M], raw: bytes) -> M:
    """Validate a raw JSON body; errors take the same path as FastAPI's own validation."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def _json_body(schema: str) -> dict[str, Any]:
    """OpenAPI for a route that reads its JSON body itself."""
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


class _StreamPump:
    """Reads a stream in one task into a queue, and puts ``_HEARTBEAT`` in whenever
    ``interval`` passes without an item: the reader awaits one queue, with no task or timer
    per chunk. Items are chunks, then ``_END``, or the exception that ended the stream."""

    def __init__(self, source: AsyncIterator[dict[str, Any]], interval: float) -> None:
        self._source, self._interval = source, interval
        self._loop = asyncio.get_running_loop()
        # Bounded: a slow reader holds the engine stream back instead of buffering it all.
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        self._last = self._loop.time()
        self._task = asyncio.ensure_future(self._run())
        self._timer = self._loop.call_at(self._last + interval, self._tick)

    async def _run(self) -> None:
        try:
            async for item in self._source:
                self._last = self._loop.time()
                await self._queue.put(item)
            end: Any = _END
        except Exception as exc:  # handed to the reader, which decides what the caller sees
            end = exc
        await self._queue.put(end)

    def _tick(self) -> None:
        now = self._loop.time()
        if now >= self._last + self._interval:
            if self._queue.empty():
                self._queue.put_nowait(_HEARTBEAT)
            self._last = now
        self._timer = self._loop.call_at(self._last + self._interval, self._tick)

    async def get(self) -> Any:
        return await self._queue.get()

    async def aclose(self) -> None:
        self._timer.cancel()
        if not self._task.done():
            self._task.cancel()
            # The source cannot be closed while a read of it still runs.
            with contextlib.suppress(BaseException):
                await self._task
        await self._source.aclose()  # type: ignore[attr-defined]


class _PumpedStream(StreamingResponse):
    """A streaming response that stops its pump however it ends: finished, failed, or the
    client gone before the first byte (when the body iterator never even starts)."""

    def __init__(self, content: AsyncIterator[bytes], pump: _StreamPump, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._pump = pump

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._pump.aclose()


class _RequestContext:
    """Pure ASGI middleware: request ids, body-size limit, metrics and one JSON log line."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def _buffer_body(self, receive: Receive) -> tuple[Receive, bool]:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                return receive, True
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        return replayed, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        length = headers.get(b"content-length")
        too_large = length is not None and length.isdigit() and int(length) > self.max_body_bytes
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # A chunked body has no length up front: read it (up to the limit) and replay it.
            receive, too_large = await self._buffer_body(receive)
        if too_large:
            response = JSONResponse(
                error_body(f"request body exceeds {self.max_body_bytes} bytes", param="body"),
                status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
            await response(scope, receive, send_with_id)
        else:
            await self.app(scope, receive, send_with_id)
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.metrics.observe_request(path, status, elapsed)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "request",
                extra={"request_id": request_id, "method": scope["method"], "path": scope["path"],
                       "status": status, "duration_ms": round(elapsed * 1000, 2)},
            )  # fmt: skip


def create_app(transport: EngineTransport, settings: Settings | None = None) -> FastAPI:
    """The wrapper app over ``transport``; ``settings`` default to the environment's."""
    settings = settings or Settings()
    metrics = Metrics()
    api_key = (
        settings.wrapper_api_key.get_secret_value().encode() if settings.wrapper_api_key else None
    )
    model_name = transport.model_name

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await transport.aclose()

    app = FastAPI(
        title=SERVICE_NAME,
        version=SERVICE_VERSION,
        description="Always-on wrapper in front of a scale-to-zero vLLM engine.",
        lifespan=lifespan,
    )
    app.state.transport = transport
    app.state.settings = settings
    app.state.metrics = metrics

    # -- auth -----------------------------------------------------------------------------------

    async def require_api_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), api_key
        ):
            raise _AuthError()

    auth = [Depends(require_api_key)]

    # -- errors ---------------------------------------------------------------------------------

    @app.exception_handler(_AuthError)
    async def _auth_error(_: Request, __: _AuthError) -> JSONResponse:
        return JSONResponse(
            error_body("missing or invalid API key: send 'Authorization: Bearer <key>'",
                       type="authentication_error", code=401),
            status_code=HTTPStatus.UNAUTHORIZED,
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or "body"
        body = error_body(f"{param}: {first.get('msg', 'invalid request')}", param=param, code=422)
        body["detail"] = json.loads(json.dumps(errors, default=str))
        return JSONResponse(body, status_code=HTTPStatus.UNPROCESSABLE_ENTITY)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own errors (unparsable body, unknown route, wrong method) in our shape.
        param = "body" if exc.status_code == HTTPStatus.BAD_REQUEST else None
        return JSONResponse(
            error_body(str(exc.detail), param=param, code=exc.status_code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(_ClientGone)
    async def _client_gone(_: Request, __: _ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    @app.exception_handler(InvalidRequest)
    async def _invalid_request(_: Request, exc: InvalidRequest) -> JSONResponse:
        return JSONResponse(
            error_body(exc.message, param=exc.param, code=exc.status), status_code=exc.status
        )

    @app.exception_handler(EngineError)
    async def _engine_error(_: Request, exc: EngineError) -> JSONResponse:
        return _engine_error_response(exc)

    # -- service info (never wakes the engine) --------------------------------------------------

    @app.get("/")
    async def root() -> dict[str, Any]:
        return {
            "service": SERVICE_NAME,
            "version": SERVICE_VERSION,
            "architecture": {
                "wrapper": "Always-on (no GPU)",
                "vllm": "Auto-scale to zero (with GPU)",
                "scaledown_window": _window_text(settings.scaledown_window),
            },
            "model": model_name,
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        status = await transport.status()
        return {
            "status": "healthy",
            "wrapper_status": "running",
            "vllm_status": "auto-scaling (idle or active)",
            "model": model_name,
            "architecture": "separated",
            "engine_state": status.state,
        }

    @app.get("/status", dependencies=auth, responses=_AUTH_ERRORS)
    async def status() -> dict[str, Any]:
        st = await transport.status()
        metrics.queue_depth.set(st.queue_depth)
        metrics.cold_starts.set(st.cold_starts)
        return {"model": model_name, **st.to_dict()}

    @app.post("/warmup", dependencies=auth, status_code=HTTPStatus.ACCEPTED, responses=_AUTH_ERRORS)
    async def warmup() -> dict[str, Any]:
        st = await transport.warmup()
        return {"model": model_name, **st.to_dict()}

    @app.get(
        "/metrics", dependencies=auth, responses=_AUTH_ERRORS, response_class=PlainTextResponse
    )
    async def metrics_route() -> Response:
        st = await transport.status()
        metrics.queue_depth.set(st.queue_depth)
        metrics.cold_starts.set(st.cold_starts)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=auth, responses=_AUTH_ERRORS)
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": model_name, "object": "model", "created": 0, "owned_by": "vllm-autoscale"}
            ],
        }

    # -- inference ------------------------------------------------------------------------------

    def check_limits(req: ChatCompletionRequest | ChatRequest, prefix: str = "") -> None:
        if len(req.messages) > settings.max_messages:
            raise InvalidRequest(
                f"at most {settings.max_messages} messages per request", f"{prefix}messages"
            )
        for name in ("max_tokens", "max_completion_tokens"):
            value = getattr(req, name, None)
            if value is not None and value > settings.max_tokens_limit:
                raise InvalidRequest(
                    f"{name} must be at most {settings.max_tokens_limit}", f"{prefix}{name}"
                )
        if getattr(req, "model", None) not in (None, "", model_name):
            raise InvalidRequest(
                f"model {req.model!r} is not served here; this service serves {model_name!r}",
                f"{prefix}model",
                HTTPStatus.NOT_FOUND,
            )

    def with_default_max_tokens(body: dict[str, Any]) -> dict[str, Any]:
        if settings.default_max_tokens and not (
            body.get("max_tokens") or body.get("max_completion_tokens")
        ):
            body["max_tokens"] = settings.default_max_tokens
        return body

    def request_meta(request: Request, info: RequestInfo, started: float) -> dict[str, Any]:
        engine_s = time.perf_counter() - started - info.queue_wait_s
        return {
            "request_id": request.state.request_id,
            "cold_start": info.cold_start,
            "queue_wait_ms": round(info.queue_wait_s * 1000, 1),
            "engine_ms": round(engine_s * 1000, 1),
            # At the configured GPU price: what this request would cost on the GPU tier.
            "cost": request_cost(
                engine_s,
                info.queue_wait_s if info.cold_start else 0.0,
                settings.gpu_price_per_hour,
                settings.gpu_count,
            ),
        }

    def meta_headers(meta: dict[str, Any]) -> dict[str, str]:
        return {
            "x-cold-start": str(meta["cold_start"]).lower(),
            "x-queue-wait-ms": str(meta["queue_wait_ms"]),
            "x-engine-ms": str(meta["engine_ms"]),
        }

    async def complete(
        request: Request, body: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        info, started = RequestInfo(), time.perf_counter()
        result = await _cancel_on_disconnect(request, transport.chat(body, info))
        metrics.count_usage(result.get("usage"))
        return result, request_meta(request, info, started)

    @app.post("/chat", dependencies=auth, responses=_INFERENCE_ERRORS)
    async def chat(req: ChatRequest, request: Request) -> JSONResponse:
        check_limits(req)
        body = with_default_max_tokens({**req.to_openai(), "model": model_name})
        result, meta = await complete(request, body)
        choice = (result.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        return JSONResponse(
            {
                "content": message.get("content") or "",
                "usage": result.get("usage"),
                "model": result.get("model", model_name),
                "finish_reason": choice.get("finish_reason"),
                "id": result.get("id"),
                "metadata": meta,
            },
            headers=meta_headers(meta),
        )

    @app.post(
        "/v1/chat/completions",
        response_model=None,
        responses={
            **_INFERENCE_ERRORS,
            200: {
                "description": "A chat completion, or with stream=true a text/event-stream",
                "content": {"application/json": {}, "text/event-stream": {}},
            },
        },
        openapi_extra=_json_body("ChatCompletionRequest"),
    )
    async def chat_completions(request: Request) -> Response:
        # The hot path, served by ``_HotRoute`` without FastAPI's routing and dependency
        # layers: auth here, and pydantic parses the raw bytes in one step.
        await require_api_key(request)
        req = _parse(ChatCompletionRequest, await request.body())
        check_limits(req)
        body = with_default_max_tokens(req.to_engine(model_name))
        if not req.stream:
            result, meta = await complete(request, body)
            result["vllm_autoscale"] = meta
            return Response(
                orjson.dumps(result), media_type="application/json", headers=meta_headers(meta)
            )
        return await stream_response(request, body)

    async def stream_response(request: Request, body: dict[str, Any]) -> Response:
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        # Usage always travels from the engine (metrics count it); callers who did not ask
        # for the usage chunk do not get it.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        info, started = RequestInfo(), time.perf_counter()
        pump = _StreamPump(transport.stream(body, info), settings.heartbeat_interval)
        # Errors that happen before the first chunk (bad params, overload) keep their HTTP
        # status; a cold start holds the first chunk back, and then the stream starts with
        # heartbeats instead.
        try:
            first = await pump.get()
        except BaseException:
            await pump.aclose()
            raise
        if isinstance(first, Exception):
            await pump.aclose()
            if isinstance(first, EngineError):
                return _engine_error_response(first)
            raise first

        async def events() -> AsyncIterator[bytes]:
            first_token, item = True, first
            while item is not _END:
                if item is _HEARTBEAT:
                    yield b": keep-alive\n\n"
                elif isinstance(item, EngineError):
                    log.warning("stream failed: %s", item.message,
                                extra={"request_id": request.state.request_id})  # fmt: skip
                    yield _sse(item.to_body())
                    break
                elif isinstance(item, Exception):
                    raise item
                else:
                    if first_token and item.get("choices"):
                        metrics.ttft.observe(time.perf_counter() - started)
                        first_token = False
                    if item.get("usage") and not item.get("choices"):
                        metrics.count_usage(item["usage"])
                        if wants_usage:
                            item["vllm_autoscale"] = request_meta(request, info, started)
                            yield _sse(item)
                    else:
                        yield _sse(item)
                item = await pump.get()
            yield _DONE

        return _PumpedStream(
            events(),
            pump,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    @app.post("/v1/chat/completions/batch", dependencies=auth, responses=_INFERENCE_ERRORS)
    async def chat_batch(req: BatchRequest, request: Request) -> JSONResponse:
        if len(req.requests) > settings.max_batch:
            raise InvalidRequest(f"at most {settings.max_batch} requests per batch", "requests")
        for i, item in enumerate(req.requests):
            check_limits(item, prefix=f"requests.{i}.")
            if item.stream:
                raise InvalidRequest("a batch cannot stream", f"requests.{i}.stream")
        info, started = RequestInfo(), time.perf_counter()
        bodies = [with_default_max_tokens(r.to_engine(model_name)) for r in req.requests]
        results = await _cancel_on_disconnect(
            request, transport.batch(bodies, info, req.max_concurrency)
        )
        meta = request_meta(request, info, started)
        out: list[dict[str, Any]] = []
        for i, result in enumerate(results):
            if isinstance(result, EngineError):
                out.append({"index": i, "status_code": result.status_code, **result.to_body()})
            else:
                metrics.count_usage(result.get("usage"))
                result["vllm_autoscale"] = meta  # each answer carries the call's facts
                out.append({"index": i, "status_code": 200, "response": result})
        return JSONResponse(
            {"object": "batch.chat.completion", "results": out, "vllm_autoscale": meta},
            headers=meta_headers(meta),
        )

    app.add_middleware(_HotRoute, endpoint=chat_completions, route=_route(app, chat_completions))
    app.add_middleware(_RequestContext, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    _document_limits(app, settings)
    return app


def _document_limits(app: FastAPI, settings: Settings) -> None:
    """Put the configured limits into the OpenAPI schema, so it says what is accepted."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        models = schema.get("components", {}).get("schemas", {})
        for name in ("ChatRequest", "ChatCompletionRequest"):
            props = models.get(name, {}).get("properties", {})
            if "messages" in props:
                props["messages"]["maxItems"] = settings.max_messages
            for field in ("max_tokens", "max_completion_tokens"):
                for branch in props.get(field, {}).get("anyOf", []):
                    if branch.get("type") == "integer":
                        branch["maximum"] = settings.max_tokens_limit
        batch = models.get("BatchRequest", {}).get("properties", {})
        if "requests" in batch:
            batch["requests"]["maxItems"] = settings.max_batch
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class _HotRoute:
    """Pure ASGI: serve one POST route directly, its errors through the app's handlers.

    FastAPI's router, dependency solver and exception middlewares cost a few hundred
    microseconds a request; on the inference route that is most of the wrapper's hop. The
    route stays registered with FastAPI, so the OpenAPI schema still documents it.
    """

    def __init__(
        self, app: ASGIApp, endpoint: Callable[[Request], Awaitable[Response]], route: APIRoute
    ) -> None:
        self.app, self.endpoint, self.route = app, endpoint, route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.route.path:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # for the metrics' route label
        request = Request(scope, receive, send)
        try:
            response = await self.endpoint(request)
        except Exception as exc:
            handler = _exception_handler(scope["app"], exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def _exception_handler(app: FastAPI, exc: Exception) -> Callable[..., Any] | None:
    for cls in type(exc).__mro__:
        if cls in app.exception_handlers:
            return app.exception_handlers[cls]
    return None


def _route(app: FastAPI, endpoint: Callable[..., Any]) -> APIRoute:
    return next(r for r in app.routes if isinstance(r, APIRoute) and r.endpoint is endpoint)


class _AuthError(Exception):
    pass


class _ClientGone(Exception):
    """The caller disconnected; its engine work was cancelled."""


async def _cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
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
            raise _ClientGone() from None
        raise
    finally:
        watcher.cancel()


def _engine_error_response(exc: EngineError) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(int(exc.retry_after))
    return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=headers)


def _window_text(seconds: float) -> str:
    if seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds:g} seconds"
