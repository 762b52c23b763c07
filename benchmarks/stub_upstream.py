"""A zero-compute OpenAI-compatible upstream, to time the wrapper's hop without vLLM's noise.

python -m benchmarks.stub_upstream --port 9001                       # the stub itself
python -m benchmarks.stub_upstream --port 9002 --wrap 9001           # a wrapper over it
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from aiohttp import web

from deploy.engine import EngineConfig, VLLMEngine

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


async def _health(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def stub_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/health", _health)
    return app


class AttachedEngine(VLLMEngine):
    """A ``VLLMEngine`` that forwards to a server it did not start (the stub)."""

    def __init__(self, port: int, name: str = "stub") -> None:
        super().__init__(EngineConfig(model=name, served_model_name=name, port=port))

    def is_running(self) -> bool:
        return True

    def launch(self) -> None:
        return None

    def stop(self, grace: float = 0) -> None:
        return None

    def _check_alive(self) -> None:
        return None


def stub_wrapper_app(upstream_port: int) -> Any:
    from deploy.config import Settings
    from deploy.transport import LocalTransport
    from deploy.wrapper import create_app

    transport = LocalTransport(
        EngineConfig(model="stub", served_model_name="stub"), scaledown_window=None
    )
    transport.engine = AttachedEngine(upstream_port)
    transport.state = "warm"
    return create_app(transport, Settings())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--wrap", type=int, default=None, help="serve a wrapper over this stub port"
    )
    args = parser.parse_args()
    if args.wrap is None:
        web.run_app(stub_app(), host="127.0.0.1", port=args.port, print=None)
        return
    import uvicorn

    uvicorn.run(stub_wrapper_app(args.wrap), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
