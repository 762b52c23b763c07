"""Inside the staged wrapper container: build the ASGI app as Modal's ``wrapper`` function
does and serve it. Its GPU calls go to an in-process stand-in of ``VLLMInference`` that
answers with a recorded vLLM reply. Args: module name, port, report path."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace
from typing import Any

from _container import import_app, raw_function, report

module_name, port, report_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
app_module = import_app(module_name)

from deploy.config import Settings  # noqa: E402  (from the staged files)
from deploy.contract import Facts, Reply  # noqa: E402


def recorded_reply(body: dict[str, Any]) -> Reply[dict[str, Any]]:
    answer = {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": app_module.settings.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the GPU stand-in."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15},
    }
    return Reply(answer, Facts(container="standin", booted_at=time.time(), engine_s=0.01))


class GpuClassStandIn:
    """Plays ``VLLMInference`` across the Modal call boundary, in this process."""

    calls: list[str] = []
    min_containers: list[int] = []

    def __init__(self) -> None:
        async def update_autoscaler(*, min_containers: int) -> None:
            self.min_containers.append(min_containers)

        self.update_autoscaler = SimpleNamespace(aio=update_autoscaler)

        async def chat(body: dict[str, Any]) -> Reply[dict[str, Any]]:
            self.calls.append("chat")
            return recorded_reply(body)

        async def stats() -> Any:
            return SimpleNamespace(num_total_runners=0, backlog=0, num_running_inputs=0)

        self.chat = SimpleNamespace(
            remote=SimpleNamespace(aio=chat), get_current_stats=SimpleNamespace(aio=stats)
        )


class ModalDictStandIn(dict):
    """Plays a ``modal.Dict`` (the calls the gateway's store makes), in this process."""

    names: list[str] = []

    @classmethod
    def from_name(cls, name: str, *, create_if_missing: bool = False) -> ModalDictStandIn:
        cls.names.append(name)
        return cls()


import modal  # noqa: E402

modal.Dict.from_name = ModalDictStandIn.from_name  # type: ignore[method-assign]
app_module.VLLMInference = GpuClassStandIn
asgi_app = raw_function(app_module.wrapper)()

# The warm schedule's function runs in this same image: run it once, as Modal's scheduler
# would, against the stand-in class.
import asyncio  # noqa: E402

targets = (
    [asyncio.run(raw_function(app_module.apply_warm_schedule)())]
    if hasattr(app_module, "apply_warm_schedule")
    else []
)

seen = Settings.load()
report(report_path, {
    "settings": seen.model_dump(mode="json", exclude={"wrapper_api_key"}),
    "has_api_key": seen.wrapper_api_key is not None,
    "engine_modules": sorted(m for m in sys.modules if m.startswith(("vllm", "torch"))),
    "state_dicts": ModalDictStandIn.names,
    "warm_schedule_targets": targets,
    "min_containers_set": GpuClassStandIn.min_containers,
})  # fmt: skip

import uvicorn  # noqa: E402

uvicorn.run(asgi_app, host="127.0.0.1", port=port, log_level="warning")
