"""Inside the staged wrapper container: build the ASGI app as Modal's ``wrapper`` function
does and serve it. Its GPU calls go to in-process stand-ins of the GPU classes
(``VLLMInference``, and ``VLLMInference_<model>`` for each further model), each answering with
a recorded vLLM reply and writing every call to ``calls.jsonl`` beside the report, keyed by
class name. Args: module name, port, report path."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from _container import import_app, raw_function, report

module_name, port, report_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
app_module = import_app(module_name)

from deploy.core.contract import Facts, Reply  # noqa: E402
from deploy.settings.settings import Settings  # noqa: E402  (from the staged files)

CALLS = Path(report_path).with_name("calls.jsonl")
# Served model name -> its GPU class's name, as the app names them (one model: VLLMInference).
CLASS_NAMES: dict[str, str] = getattr(
    app_module, "GPU_CLASS_NAMES", {app_module.settings.name: "VLLMInference"}
)


def recorded_reply(body: dict[str, Any], model: str) -> Reply[dict[str, Any]]:
    answer = {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or model,
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
    """Plays one GPU class across the Modal call boundary, in this process."""

    class_name = "VLLMInference"
    served_name = app_module.settings.name
    min_containers: list[int] = []  # every class's, in call order
    min_containers_by_class: dict[str, list[int]] = {}

    def __init__(self) -> None:
        async def update_autoscaler(*, min_containers: int) -> None:
            self.min_containers.append(min_containers)
            self.min_containers_by_class.setdefault(self.class_name, []).append(min_containers)

        self.update_autoscaler = SimpleNamespace(aio=update_autoscaler)

        async def chat(body: dict[str, Any]) -> Reply[dict[str, Any]]:
            call = {"class": self.class_name, "method": "chat", "model": body.get("model")}
            with CALLS.open("a") as out:
                out.write(json.dumps(call) + "\n")
            return recorded_reply(body, self.served_name)

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
for served_name, class_name in CLASS_NAMES.items():  # found by name, as the wrapper finds them
    stand_in = type(class_name, (GpuClassStandIn,), {"class_name": class_name,
                                                     "served_name": served_name})  # fmt: skip
    setattr(app_module, class_name, stand_in)
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
    "min_containers_by_class": GpuClassStandIn.min_containers_by_class,
    "gpu_classes": CLASS_NAMES,
})  # fmt: skip

import uvicorn  # noqa: E402

uvicorn.run(asgi_app, host="127.0.0.1", port=port, log_level="warning")
