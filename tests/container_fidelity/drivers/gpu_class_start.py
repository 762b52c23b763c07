"""Inside a staged GPU container, up to vLLM: find the class by name in the app's module, as
Modal's container entrypoint does, run its enter method with an ``InferenceServer`` that
records what it is built with (no engine is started), and report the engine configuration
and the class's methods. Args: module name, class name, report path."""

from __future__ import annotations

import asyncio
import dataclasses
import sys

from _container import import_app, raw_method, report

module_name, class_name, report_path = sys.argv[1], sys.argv[2], sys.argv[3]
app_module = import_app(module_name)

import deploy.engine.server  # noqa: E402  (from the staged files)

built: list[dict] = []


class RecordingServer:
    def __init__(self, config, **_: object) -> None:
        built.append(dataclasses.asdict(config) | {"command": config.command(8001)})

    async def start(self) -> None:
        pass


deploy.engine.server.InferenceServer = RecordingServer  # type: ignore[misc]
user_cls = getattr(app_module, class_name)._get_user_cls()  # modal's lookup: by name
asyncio.run(raw_method(user_cls, "start")(user_cls()))
report(report_path, {
    "engine": built[0],
    "methods": sorted(k for k, v in vars(user_cls).items() if hasattr(v, "_get_raw_f")),
})  # fmt: skip
