"""What Modal hands each container, read from the Modal objects with modal's own code.

``modal deploy deploy/modal_app.py`` imports that file as the top-level module ``modal_app``
(modal's "file mode"): the function's own mount is then ``/root/modal_app.py`` alone, and
everything else a container gets comes from its image: the packages its build steps
install, the environment they set, and the files its ``add_local_*`` layers mount. This
module reproduces that import and lists all of it, so that ``vllm-autoscale deploy --dry-run``
can print it and the container-fidelity tests can stage exactly those files and nothing more.

The GPU class's containers run in its pools, one per served model (``GPU_POOLS``: the class
``with_options(...)`` and bound to the model, see ``deploy/cloud/pools.py``): the class's
image, files and secrets with the pool's own GPU, window, bounds, concurrency and Volumes,
read here from the pool objects themselves.

It reads a few private attributes of modal's client (pinned in pyproject); a modal release
that moves them fails the fidelity tests loudly rather than passing silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "ContainerManifest",
    "app_functions",
    "collect",
    "import_like_modal_deploy",
    "manifests",
    "pool_options",
]

APP_FILE = Path(__file__).resolve().parent.parent / "modal_app.py"
BUILDER_VERSION = "2025.06"  # only shapes the generated Dockerfile lines, not what they install


@dataclass
class ContainerManifest:
    """One Modal function's container, as the objects that define it describe it."""

    function: str
    module: str
    """The module name the container imports to find the function."""
    files: dict[str, str]
    """Container path -> local source path, for every file mounted into the container."""
    packages: list[str] = field(default_factory=list)
    """Requirement specs the image's build steps install."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment the image's build steps set."""
    base: str = ""
    """The image's first build step (the base image)."""
    gpu: str | None = None
    secrets: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    """A pool's parameters (the GPU class bound to one served model)."""
    options: dict[str, Any] = field(default_factory=dict)
    """A pool's own options: scaledown window, container bounds, concurrency, Volumes."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_like_modal_deploy(app_file: Path = APP_FILE) -> ModuleType:
    """Import ``app_file`` as ``modal deploy <app_file>`` does (file mode, module ``modal_app``).

    It changes ``sys.path`` and ``sys.modules`` as the CLI does: call it in a process of its
    own (the CLI, or a test's subprocess).
    """
    from modal.cli.import_refs import ImportRef, import_file_or_module  # noqa: PLC0415 - modal is the 'modal' extra; its private mount/image code is read only here

    return import_file_or_module(ImportRef(str(app_file), use_module_mode=False))


def _closure(fn: Any) -> dict[str, Any]:
    cells = fn.__closure__ or ()
    return dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in cells), strict=True))


def _layers(image: Any) -> list[Any]:
    """The image's layers (modal ``_Image`` objects), base first."""
    from modal._image import _Image  # noqa: PLC0415 - modal is the 'modal' extra; its private mount/image code is read only here
    from modal._utils.async_utils import synchronizer  # noqa: PLC0415 - modal is the 'modal' extra; its private mount/image code is read only here

    layer, layers = synchronizer._translate_in(image), []
    while layer is not None:
        layers.append(layer)
        layer = next((d for d in layer._deps_() if isinstance(d, _Image)), None)
    return layers[::-1]


def _mount_files(mount: Any) -> dict[str, str]:
    from modal.mount import _select_files  # noqa: PLC0415 - modal is the 'modal' extra; its private mount/image code is read only here

    return {remote.as_posix(): str(local) for local, remote in _select_files(mount.entries)}


def _image_parts(image: Any) -> tuple[dict[str, str], list[str], dict[str, str], str]:
    from modal.mount import _Mount  # noqa: PLC0415 - modal is the 'modal' extra; its private mount/image code is read only here

    files: dict[str, str] = {}
    packages: list[str] = []
    env: dict[str, str] = {}
    base = ""
    for layer in _layers(image):
        for dep in layer._deps_():
            if isinstance(dep, _Mount):  # add_local_* layers (mounted at container start)
                files.update(_mount_files(dep))
        build = _closure(layer._load).get("dockerfile_function")
        if build is None:
            continue
        commands = build(BUILDER_VERSION).commands
        base = base or next((c for c in commands if c.startswith("FROM ")), "")
        steps = _closure(build)
        packages += [str(p) for p in steps.get("pkgs", ())]  # pip_install / uv_pip_install
        env.update({str(k): str(v) for k, v in steps.get("vars", {}).items()})  # .env(...)
    return files, packages, env, base


def app_functions(module: ModuleType) -> dict[str, Any]:
    """Every function the app in ``module`` (a loaded ``modal_app``) deploys, in the order it
    defines them, by name: the GPU class (its service function, which runs all its methods:
    ``VLLMInference``), ``wrapper``, and ``apply_warm_schedule`` when a warm schedule is
    set."""
    from modal._utils.async_utils import synchronizer  # noqa: PLC0415 - modal is the 'modal' extra; its private mount/image code is read only here

    app = synchronizer._translate_in(module.app)
    return {tag.removesuffix(".*"): fn for tag, fn in app._local_state.functions.items()}


def pool_options(pool: Any) -> dict[str, Any]:
    """What one pool (``Cls.with_options(...)...(**parameters)``, an ``Obj``) runs with, read
    from the object: its class, parameters, and the options it sets over the class's
    (``gpu`` None, and others None or empty, where it sets none)."""
    from modal._utils.async_utils import synchronizer  # noqa: PLC0415 - modal is the 'modal' extra; its private mount/image code is read only here

    obj = synchronizer._translate_in(pool)
    options = obj._cls._options
    gpu = None
    if options.resources is not None and options.resources.gpu_config.count:
        config = options.resources.gpu_config
        gpu = config.gpu_type if config.count == 1 else f"{config.gpu_type}:{config.count}"
    return {
        "class": obj._cls._get_name(),
        "parameters": dict(obj._kwargs),
        "gpu": gpu,
        "scaledown_window": options.scaledown_window,
        "max_containers": options.max_containers,
        "max_inputs": options.max_concurrent_inputs,
        "target_inputs": options.target_concurrent_inputs,
        "volumes": sorted(path for path, _ in options.validated_volumes),
    }


def _pools(module: ModuleType, class_name: str) -> list[dict[str, Any]]:
    """The pools of the class ``class_name`` in ``module`` (its ``GPU_POOLS``), in order."""
    pools = [pool_options(p) for p in getattr(module, "GPU_POOLS", {}).values()]
    return [p for p in pools if p["class"] == class_name]


def _pool_name(class_name: str, parameters: dict[str, Any], first: bool) -> str:
    """The first pool (the default model's) keeps the class's name; the others are named by
    the call that binds them: ``VLLMInference(model='Qwen/Qwen3-8B')``."""
    if first:
        return class_name
    return f"{class_name}({', '.join(f'{k}={v!r}' for k, v in parameters.items())})"


def manifests(module: ModuleType) -> dict[str, ContainerManifest]:
    """Each Modal function of ``module`` (a loaded ``modal_app``) and what its containers get;
    a class with pools, once per pool (what each pool's containers get)."""
    out: dict[str, ContainerManifest] = {}
    for name, fn in app_functions(module).items():
        files, packages, env, base = _image_parts(fn._spec.image)
        for mount in fn._spec.mounts:  # the function's own module (modal's client is remote)
            if mount.is_local():
                files.update(_mount_files(mount))
        container = ContainerManifest(
            function=name,
            module=fn._source_info.module_name,
            files=dict(sorted(files.items())),
            packages=packages,
            env=env,
            base=base,
            gpu=fn._spec.gpus if isinstance(fn._spec.gpus, str) else None,
            secrets=[repr(s) for s in fn._spec.secrets],
        )
        pools = _pools(module, name)
        if not pools:
            out[name] = container
        for i, pool in enumerate(pools):
            parameters = pool.pop("parameters")
            gpu = pool.pop("gpu") or container.gpu
            del pool["class"]
            out[_pool_name(name, parameters, first=i == 0)] = replace(
                container, gpu=gpu, parameters=parameters, options=pool
            )
    return out


def collect(env: dict[str, str] | None = None, python: str = sys.executable) -> dict[str, Any]:
    """Every container's manifest as JSON data, from a fresh process (the import changes
    ``sys.path`` and ``sys.modules``), under ``env`` (default: this process's)."""
    out = subprocess.run(
        [python, "-m", f"{__package__}.manifest"],
        cwd=APP_FILE.parent.parent, env=env if env is not None else dict(os.environ),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"reading the Modal app failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def main() -> int:
    """Print every container's manifest as JSON (run from the repository root)."""
    module = import_like_modal_deploy()
    json.dump({k: v.to_dict() for k, v in manifests(module).items()}, sys.stdout, indent=2)
    print()  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
