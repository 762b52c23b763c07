"""Inside the staged wrapper container: build the ASGI app as Modal's ``wrapper`` function
does and serve it. Its GPU calls go to in-process stand-ins of the models' pools (``GPU_POOLS``:
``VLLMInference`` bound to each served model), each taking the place of the real pool object,
playing the pool that object is bound to (its parameters and GPU, read from it), answering
with a recorded vLLM reply and writing every call to ``calls.jsonl`` beside the report, keyed
by the pool's ``model`` parameter. Args: module name, port, report path."""

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

from deploy.cloud.manifest import pool_options  # noqa: E402  (from the staged files)
from deploy.core.contract import Facts, Reply  # noqa: E402
from deploy.settings.settings import Settings  # noqa: E402

CALLS = Path(report_path).with_name("calls.jsonl")
# Served model name -> its pool as the app built it: the class, parameters and options.
POOLS: dict[str, dict[str, Any]] = {
    name: pool_options(pool) for name, pool in app_module.GPU_POOLS.items()
}


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


class GpuPoolStandIn:
    """Plays one pool (the GPU class bound to one model) across the Modal call boundary, in
    this process. It has every method of the class, adapters' too, as every pool has."""

    min_containers: list[int] = []  # every pool's, in call order
    min_containers_by_pool: dict[str, list[int]] = {}

    def __init__(self, pool: str) -> None:
        self.pool = pool  # the real pool's ``model`` parameter

        async def update_autoscaler(*, min_containers: int) -> None:
            self.min_containers.append(min_containers)
            self.min_containers_by_pool.setdefault(self.pool, []).append(min_containers)

        self.update_autoscaler = SimpleNamespace(aio=update_autoscaler)

        def record(method: str, model: str | None) -> None:
            with CALLS.open("a") as out:
                out.write(json.dumps({"pool": self.pool, "method": method, "model": model}))
                out.write("\n")

        async def chat(body: dict[str, Any]) -> Reply[dict[str, Any]]:
            record("chat", body.get("model"))
            return recorded_reply(body, self.pool)

        async def load_adapter(name: str, source: str) -> dict[str, Any]:
            record("load_adapter", name)
            return {"adapter": name, "source": source, "container": "standin"}

        self.load_adapter = SimpleNamespace(remote=SimpleNamespace(aio=load_adapter))

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
for served_name, pool in POOLS.items():  # in the real pools' places, as the wrapper reads them
    app_module.GPU_POOLS[served_name] = GpuPoolStandIn(pool["parameters"]["model"])
asgi_app = raw_function(app_module.wrapper)()

# The warm schedule's function runs in this same image: run it once, as Modal's scheduler
# would, against the stand-in pools.
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
    "min_containers_set": GpuPoolStandIn.min_containers,
    "min_containers_by_pool": GpuPoolStandIn.min_containers_by_pool,
    "gpu_pools": POOLS,
})  # fmt: skip

import uvicorn  # noqa: E402

uvicorn.run(asgi_app, host="127.0.0.1", port=port, log_level="warning")
