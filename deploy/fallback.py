"""A fallback while the GPU wakes: an OpenAI-compatible endpoint serves the requests that
arrive while the engine is cold or starting, and the engine is woken meanwhile. Once it is
warm, everything goes back to it. Opt-in: ``VLLM_COLD_FALLBACK_URL``.

Which cold-time requests go to the fallback (``VLLM_COLD_FALLBACK_POLICY``):

- ``always``: every one;
- ``header``: those that allow it with ``X-Allow-Fallback: true``; the others wait for the
  engine as usual;
- ``after``: those still waiting after ``VLLM_COLD_FALLBACK_AFTER`` seconds.

``FallbackTransport`` is an ``EngineTransport`` (deploy/contract.py), so streams, tool calls,
metadata and errors take the same path as the engine's. ``ColdRouter`` picks, per request,
the engine or the fallback, from what the engine transport last saw (no I/O per request).
Batches always go to the engine; fallback answers are never cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import orjson

from .contract import BatchResults, EngineState, EngineStatus, EngineTransport, Facts, Reply
from .errors import EngineError, EngineRequestError, EngineUnavailable

__all__ = ["ColdRouter", "FallbackTransport"]

log = logging.getLogger("vllm_autoscale.fallback")
ALLOW_HEADER = "x-allow-fallback"
_WAKE_EVERY_S = 5.0


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
        if self._model:
            out["model"] = self._model
        return out

    @staticmethod
    def _facts() -> Facts:
        return Facts(container="fallback")

    async def _check(self, resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        text = (await resp.aread()).decode(errors="replace")
        message, param = text[:500], None
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            err = orjson.loads(text).get("error") or {}
            message, param = err.get("message") or message, err.get("param")
        if resp.status_code < 500 and resp.status_code not in (401, 403, 429):
            raise EngineRequestError(
                f"fallback: {message}", status_code=resp.status_code, param=param
            )
        # The fallback's own key, quota or health: not the caller's fault, worth retrying.
        raise EngineUnavailable(
            f"the fallback failed ({resp.status_code}): {message}", retry_after=5
        )

    async def chat(self, body: dict[str, Any]) -> Reply[dict[str, Any]]:
        url = f"{self.base_url}/chat/completions"
        try:
            resp = await self._client().post(url, json=self._body(body, False))
            await self._check(resp)
            return Reply(orjson.loads(resp.content), self._facts())
        except EngineError:
            raise
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"cannot reach the fallback: {exc!r}", retry_after=5) from exc

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[Reply[dict[str, Any]]]:
        url = f"{self.base_url}/chat/completions"
        try:
            async with self._client().stream("POST", url, json=self._body(body, True)) as resp:
                await self._check(resp)
                first = True
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = orjson.loads(data)
                    if "error" in chunk and "choices" not in chunk:
                        raise EngineUnavailable(f"the fallback failed: {chunk['error']}")
                    yield Reply(chunk, self._facts() if first else None)
                    first = False
            raise EngineUnavailable("the fallback closed the stream before it finished")
        except EngineError:
            raise
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"lost the fallback: {exc!r}", retry_after=5) from exc

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
