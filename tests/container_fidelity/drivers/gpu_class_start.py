"""Inside a staged GPU container of one pool, up to vLLM: find the class by name in the app's
module and bind it to the pool's parameters, as Modal's container entrypoint does, run its
enter methods with an ``InferenceServer`` that records what it is built with (no engine is
started), and report the engine configuration and the class's methods. Args: module name,
class name, the pool's parameters (JSON), report path."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys

from _container import container_instance, import_app, raw_method, report

module_name, class_name, report_path = sys.argv[1], sys.argv[2], sys.argv[4]
parameters = json.loads(sys.argv[3])
app_module = import_app(module_name)

import deploy.engine.server  # noqa: E402  (from the staged files)

built: list[dict] = []


class RecordingServer:
    def __init__(self, config, **_: object) -> None:
        built.append(dataclasses.asdict(config) | {"command": config.command(8001)})

    async def start(self) -> None:
        pass


deploy.engine.server.InferenceServer = RecordingServer  # type: ignore[misc]
container = container_instance(app_module, class_name, parameters)
user_cls = type(container)
for enter in ("start", "wake"):  # the class's enter methods, in its order
    asyncio.run(raw_method(user_cls, enter)(container))
report(report_path, {
    "engine": built[0],
    "parameters": {k: getattr(container, k) for k in parameters},
    "methods": sorted(k for k, v in vars(user_cls).items() if hasattr(v, "_get_raw_f")),
})  # fmt: skip
