"""A fallback while the GPU wakes: an OpenAI-compatible endpoint serves the requests that
arrive while the engine is cold or starting, and the engine is woken meanwhile. Once it is
warm, everything goes back to it. Opt-in: ``VLLM_COLD_FALLBACK_URL``.

Which cold-time requests go to the fallback (``VLLM_COLD_FALLBACK_POLICY``):

- ``always``: every one;
- ``header``: those that allow it with ``X-Allow-Fallback: true``; the others wait for the
  engine as usual;
- ``after``: those still waiting after ``VLLM_COLD_FALLBACK_AFTER`` seconds.

``FallbackTransport`` is an ``EngineTransport`` (deploy/core/contract.py), so streams, tool calls,
metadata and errors take the same path as the engine's. ``ColdRouter`` picks, per request,
the engine or the fallback, from what the engine transport last saw (no I/O per request).
Batches always go to the engine; fallback answers are never cached.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import orjson

from ..core.contract import (
    BatchResults,
    EngineState,
    EngineStatus,
    EngineTransport,
    Facts,
    Reply,
    engine_endpoint,
)
from ..core.errors import (
    EngineError,
    EngineRequestError,
    EngineUnavailable,
    UpstreamError,
    error_from_body,
)
from ..core.sse import JSONStream

__all__ = ["ColdRouter", "FallbackTransport"]

log = logging.getLogger("vllm_autoscale.fallback")
ALLOW_HEADER = "x-allow-fallback"
_WAKE_EVERY_S = 5.0
_RETRY_S = 5
_KEYLIKE = re.compile(
    r"(?i:\b(?:bearer|basic)\s+)\S+"  # an Authorization header's value
    r"|(?<![A-Za-z0-9])(?:sk|vak|rk)[-_]\S*"  # sk-..., sk-proj-..., vak-... (masked or not)
    r"|\S*(?:\*{2,}|\.{3}|\u2026)[A-Za-z0-9]\S*|\S*[A-Za-z0-9]\*{2,}\S*"  # ***wxyz, ab***
    r"|(?=[\w-]*\d)(?=[\w-]*[A-Za-z])(?<![\w-])[\w-]{20,}"  # a long opaque token
)
"""What a key looks like in another party's error text: redacted before it is logged."""


class FallbackTransport:
    """An OpenAI-compatible chat completions endpoint, behind the transport interface."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str | None,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http_transport = http_transport  # tests: httpx.MockTransport
        self.model_name = model or "fallback"
        self._model = model  # None: the request's own model name is sent
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._secrets = [api_key, api_key[-4:]] if api_key and len(api_key) >= 8 else [api_key]
        # httpx, not aiohttp: the wrapper's container carries no engine-side client.
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()  # an httpx pool belongs to the loop that opened it
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = self._clients[loop] = httpx.AsyncClient(
                headers=self._headers, timeout=httpx.Timeout(300, connect=10),
                transport=self._http_transport,
            )  # fmt: skip
        return client

    def _body(self, body: Mapping[str, Any], stream: bool) -> dict[str, Any]:
        out = {**body, "stream": stream}
        out.pop("cache_salt", None)  # vLLM's, for its prefix cache: not another provider's
        if self._model:
            out["model"] = self._model
        return out

    @staticmethod
    def _facts() -> Facts:
        return Facts(container="fallback")

    def redact(self, text: str) -> str:
        """``text`` (the fallback's) with this fallback's key and anything key-like hidden."""
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "[redacted]")
        return _KEYLIKE.sub("[redacted]", text)

    async def _check(self, resp: httpx.Response) -> None:
        """Any error status: a retryable 503 that names the fallback and its status, never
        its text (another party's, which may quote a key: "Incorrect API key provided:
        sk-...abcd"). The fallback's refusal is not the service's either: the request was
        valid here, and the engine serves it once warm. The text is logged, redacted."""
        if resp.status_code < 400:
            return
        message = error_from_body(resp.status_code, await resp.aread()).message
        log.warning("the cold fallback answered %d: %s", resp.status_code,
                    self.redact(message[:500]))  # fmt: skip
        raise EngineUnavailable(
            f"the cold fallback answered {resp.status_code} while the engine is starting: "
            "send the request again shortly",
            retry_after=_RETRY_S,
        )

    def _unreachable(self, exc: Exception, what: str) -> EngineUnavailable:
        log.warning("%s the cold fallback: %s", what, self.redact(repr(exc)[:500]))
        return EngineUnavailable(
            f"{what} the cold fallback ({type(exc).__name__}) while the engine is starting: "
            "send the request again shortly",
            retry_after=_RETRY_S,
        )

    def _route(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The fallback's URL for the route ``body`` is for, and the body without its key."""
        endpoint, body = engine_endpoint(body)
        return self.base_url + endpoint.removeprefix("/v1"), body

    async def chat(self, body: dict[str, Any]) -> Reply[dict[str, Any]]:
        url, body = self._route(body)
        try:
            resp = await self._client().post(url, json=self._body(body, False))
            await self._check(resp)
            return Reply(orjson.loads(resp.content), self._facts())
        except EngineError:
            raise
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, "cannot reach") from None
        except orjson.JSONDecodeError as exc:
            raise self._unreachable(exc, "no JSON answer from") from None

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[Reply[dict[str, Any]]]:
        url, body = self._route(body)
        try:
            async with self._client().stream("POST", url, json=self._body(body, True)) as resp:
                await self._check(resp)
                first = True
                try:
                    async with JSONStream(resp.aiter_bytes()) as chunks:
                        async for chunk in chunks:
                            yield Reply(chunk, self._facts() if first else None)
                            first = False
                except UpstreamError as error:  # its error event: logged redacted, not passed on
                    log.warning("the cold fallback failed mid-stream: %s",
                                self.redact(error.message[:500]))  # fmt: skip
                    raise EngineUnavailable(
                        "the cold fallback failed during the stream: send the request again",
                        retry_after=_RETRY_S,
                    ) from None
                if chunks.done:
                    return
            raise EngineUnavailable("the cold fallback closed the stream before it finished",
                                    retry_after=_RETRY_S)  # fmt: skip
        except EngineError:
            raise
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, "lost") from None
        except orjson.JSONDecodeError as exc:
            raise self._unreachable(exc, "no JSON stream from") from None

    async def batch(
        self, bodies: Sequence[dict[str, Any]], max_concurrency: int | None = None
    ) -> Reply[BatchResults]:
        raise EngineRequestError("batches are not sent to the fallback", status_code=400)

    async def status(self) -> EngineStatus:
        return EngineStatus("warm", queue_depth=0, in_flight=0, cold_starts=0,
                            scaledown_window=None, extra={"url": self.base_url})  # fmt: skip

    async def warmup(self) -> EngineStatus:
        return await self.status()

    def state_hint(self) -> EngineState:
        return "warm"

    async def aclose(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


class ColdRouter:
    """Per request: the engine, or (while it is cold) the fallback, by the policy."""

    def __init__(self, fallback: EngineTransport, policy: str, after: float) -> None:
        self.fallback, self.policy, self.after = fallback, policy, after
        self.served = 0
        """Requests the fallback answered (``/status``)."""
        self._woken_at: dict[int, float] = {}  # per engine
        self._wakes: set[asyncio.Task[Any]] = set()

    def _wake(self, engine: EngineTransport) -> None:
        """Start the engine without waiting (once every few seconds, however many ask)."""
        now = time.monotonic()
        if now - self._woken_at.get(id(engine), -_WAKE_EVERY_S) < _WAKE_EVERY_S:
            return
        self._woken_at[id(engine)] = now
        task = asyncio.ensure_future(engine.warmup())
        self._wakes.add(task)
        task.add_done_callback(self._woke)

    def _woke(self, task: asyncio.Task[Any]) -> None:
        self._wakes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("waking the engine failed: %s", task.exception())

    async def pick(self, engine: EngineTransport, headers: Mapping[str, str]) -> EngineTransport:
        """``engine`` (the request's model's), or the fallback while it is cold."""
        if engine.state_hint() == "warm":
            return engine
        if self.policy == "header" and headers.get(ALLOW_HEADER, "").lower() not in (
            "1", "true", "yes",
        ):  # fmt: skip
            return engine
        self._wake(engine)
        if self.policy == "after":
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.after
            while loop.time() < deadline:
                await asyncio.sleep(0.1)
                if engine.state_hint() == "warm":
                    return engine
        self.served += 1
        return self.fallback
