"""A zero-compute OpenAI-compatible upstream, to time the wrapper's hop without vLLM's noise.

python -m benchmarks.stub_upstream --port 9001                       # the stub itself
python -m benchmarks.stub_upstream --port 9002 --wrap 9001           # a wrapper over it
python -m benchmarks.stub_upstream --port 9003 --bare 9001           # a bare forward over it

The bare forward (raw ASGI + aiohttp, nothing else) is the floor for any Python hop on the
machine at hand: the wrapper's cost over it is what its features (auth, validation, limits,
metrics, request ids, cancellation, metadata) take.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from deploy.engine.process import EngineConfig, VLLMEngine

REPLY = {
    "id": "chatcmpl-stub",
    "object": "chat.completion",
    "created": 0,
    "model": "stub",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "length"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}
_BODY = json.dumps(REPLY).encode()


async def _chat(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=_BODY, content_type="application/json")


# The other inference routes, canned the same way (benchmarks/routes_hop.py).
_CANNED = {
    "/v1/completions": {"id": "cmpl-stub", "object": "text_completion", "created": 0,
                        "model": "stub", "choices": [{"index": 0, "text": "ok",
                                                      "finish_reason": "length"}],
                        "usage": REPLY["usage"]},
    "/v1/embeddings": {"object": "list", "model": "stub-embed",
                       "data": [{"object": "embedding", "index": 0, "embedding": [0.0] * 384}],
                       "usage": {"prompt_tokens": 5, "total_tokens": 5}},
    "/v1/responses": {"id": "resp_stub", "object": "response", "created_at": 0, "model": "stub",
                      "status": "completed", "output": [],
                      "usage": {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6}},
}  # fmt: skip


def _canned(route: str) -> Any:
    body = json.dumps(_CANNED[route]).encode()

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    return answer


async def _health(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def stub_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    for route in _CANNED:
        app.router.add_post(route, _canned(route))
    app.router.add_get("/health", _health)
    return app


class AttachedEngine(VLLMEngine):
    """A ``VLLMEngine`` that forwards to a server it did not start (the stub)."""

    def __init__(self, port: int, name: str = "stub", runner: str = "generate") -> None:
        super().__init__(EngineConfig(model=name, served_model_name=name, port=port, runner=runner))

    def is_running(self) -> bool:
        return True

    def launch(self) -> None:
        return None

    def stop(self, grace: float = 0) -> None:
        return None

    def _check_alive(self) -> None:
        return None


def stub_wrapper_app(upstream_port: int, models: int = 1, embed: bool = False) -> Any:
    """A wrapper over the stub; with ``models`` > 1, that many served models ("stub", then
    "stub-2", ...), each its own transport to the stub (routing's cost); with ``embed``, an
    embedding model "stub-embed" beside them (the other routes' cost)."""
    from deploy.settings.settings import Settings
    from deploy.transports.local import LocalTransport
    from deploy.wrapper import create_app

    transports = {}
    for i in range(models):
        name = "stub" if i == 0 else f"stub-{i + 1}"
        transport = LocalTransport(
            EngineConfig(model=name, served_model_name=name), scaledown_window=None
        )
        transport.engine = AttachedEngine(upstream_port, name)
        transport.state = "warm"
        transports[name] = transport
    if not embed:
        return create_app(transports, Settings())
    transport = LocalTransport(
        EngineConfig(model="stub-embed", served_model_name="stub-embed", runner="pooling"),
        scaledown_window=None,
    )
    transport.engine = AttachedEngine(upstream_port, "stub-embed", runner="pooling")
    transport.state = "warm"
    transports["stub-embed"] = transport
    specs = [{"name": name} for name in transports if name != "stub-embed"]
    specs.append({"name": "stub-embed", "runner": "pooling"})
    return create_app(transports, Settings(models=json.dumps(specs)))


class BareForward:
    """Raw ASGI app that forwards every request body to the upstream's chat route, unread."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = f"http://127.0.0.1:{upstream_port}"
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if self._session is None:
            self._session = aiohttp.ClientSession(self.upstream)
        headers = {"content-type": "application/json"}
        async with self._session.post("/v1/chat/completions", data=body, headers=headers) as r:
            reply = await r.read()
        start = {"type": "http.response.start", "status": r.status,
                 "headers": [(b"content-type", b"application/json")]}  # fmt: skip
        await send(start)
        await send({"type": "http.response.body", "body": reply})

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--wrap", type=int, default=None, help="serve a wrapper over this stub port"
    )
    parser.add_argument("--bare", type=int, default=None, help="serve a bare forward to this port")
    parser.add_argument("--models", type=int, default=1, help="served models of the wrapper")
    parser.add_argument("--embed", action="store_true", help="serve an embedding model too")
    args = parser.parse_args()
    if args.wrap is None and args.bare is None:
        web.run_app(stub_app(), host="127.0.0.1", port=args.port, print=None)
        return
    import uvicorn

    if args.bare is not None:
        bare = BareForward(args.bare)
        uvicorn.run(bare, host="127.0.0.1", port=args.port, log_level="warning", lifespan="off")
        return
    uvicorn.run(
        stub_wrapper_app(args.wrap, args.models, args.embed), host="127.0.0.1", port=args.port,
        log_level="warning",
    )  # fmt: skip


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
