"""Assembly: ``create_app(transport, settings)`` puts the wrapper's parts together.

The order matters in two places: the hot route is the router's first route (it is matched
first; ``FastPath`` hands it its requests past the inner layers), and ``RequestContext`` is
the outermost middleware (it sees every request, the rejected ones included).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from ..core.contract import EngineTransport
from ..core.model_info import ModelInfo
from ..gateway import Gateway
from ..gateway.store import StateStore
from ..settings.settings import SERVICE_NAME, SERVICE_VERSION, Settings
from ..transports.fallback import ColdRouter, FallbackTransport
from . import handlers
from .metrics import Metrics
from .middleware import FastPath, RequestContext
from .protocol import Limits, RequestModels, request_models
from .routes import adapters as routes_adapters
from .routes import completions_embeddings_responses as routes_more_apis
from .routes import dashboard as routes_dashboard
from .routes import docs as routes_docs
from .routes import gateway as routes_gateway
from .routes import gpu as routes_gpu
from .routes import openai as routes_openai
from .routes import seed as routes_seed
from .routes import service as routes_service
from .routes import tokenize as routes_tokenize
from .routes.gateway import NewKey
from .serving.registry import ModelRegistry
from .serving.service import Serving

__all__ = ["create_app"]

DESCRIPTION = "Always-on wrapper in front of a scale-to-zero vLLM engine."


def create_app(
    transports: EngineTransport | Mapping[str, EngineTransport],
    settings: Settings | None = None,
    model_info: ModelInfo | None = None,
    store: StateStore | None = None,
    fallback: EngineTransport | None = None,
) -> FastAPI:
    """The wrapper app over ``transports``: one transport, or served name -> transport for
    several models (the first is the default); ``settings`` default to the environment's
    (each model's own from ``settings.served_models()``). ``model_info`` (what
    ``/v1/models`` reports, what ``/tokenize`` counts with, for the default model) defaults
    to what the transport's engine configuration or the settings say: never the engine.
    ``store`` holds the gateway's shared state (default: ``VLLM_STATE_URL``'s); ``fallback``
    serves while the engine is cold (default: ``VLLM_COLD_FALLBACK_URL``'s, if set)."""
    settings = settings or Settings.load()
    limits = Limits.from_settings(settings)
    models = request_models(limits)
    gateway = Gateway(settings, store)
    registry = ModelRegistry(transports, settings, model_info)
    for served in registry.models.values():  # the GPU up-time meter: each model's engine
        gateway.meter(served.name, served.transport, served.settings)
    if fallback is None and settings.cold_fallback_url:
        key = settings.cold_fallback_api_key
        fallback = FallbackTransport(
            settings.cold_fallback_url, key.get_secret_value() if key else None,
            settings.cold_fallback_model,
        )  # fmt: skip
    cold = (
        ColdRouter(fallback, settings.cold_fallback_policy, settings.cold_fallback_after)
        if fallback is not None else None
    )  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Who may call is known before the first request: the store's keys are read first.
        await gateway.start()
        yield
        try:
            # On Modal, a container stop; locally, LocalStack has drained already (a no-op).
            await app.state.service.drain(settings.drain_grace)
            await gateway.aclose()  # the ledger's last rows (spilled if the store is down)
        finally:
            for served in registry.models.values():
                await served.transport.aclose()
            if fallback is not None:
                await fallback.aclose()

    # The docs need a key like every route (an open wrapper lets everyone in), unless
    # VLLM_PUBLIC_DOCS: routes_docs serves them.
    public_docs = settings.public_docs
    app = FastAPI(
        title=SERVICE_NAME, version=SERVICE_VERSION, description=DESCRIPTION, lifespan=lifespan,
        **({} if public_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}),
    )  # fmt: skip
    metrics = Metrics()
    gateway.on_store_error = metrics.count_store_error
    # What the routes, the handlers and the tests read (nothing else lives here).
    app.state.transport = registry.default.transport  # the default model's (benchmarks)
    app.state.models = registry
    app.state.metrics = metrics
    app.state.gateway = gateway
    app.state.service = Serving(registry, settings, metrics, gateway, cold)

    handlers.install(app)
    hot = [routes_openai.hot_route(models), *routes_more_apis.hot_routes(models)]
    app.router.routes.extend(hot)  # first: matched first
    app.include_router(routes_seed.router(models))
    app.include_router(routes_openai.router(models))
    app.include_router(routes_service.router)
    app.include_router(routes_tokenize.router(limits))
    app.include_router(routes_gateway.router)
    app.include_router(routes_gpu.router)
    app.include_router(routes_adapters.router)
    app.include_router(routes_dashboard.router)  # the page is public; its data is not
    if not public_docs:
        app.include_router(routes_docs.router)
    app.add_middleware(FastPath, routes=hot)
    app.add_middleware(RequestContext, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    app.openapi = lambda: _openapi(app, models)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI, models: RequestModels) -> dict[str, Any]:
    """FastAPI's schema plus the hot route, all from the same request models."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    # The inference routes read their bodies themselves (after auth): their request models
    # join the schema here, from the same classes that validate.
    request_bodies = (models.chat, models.chat_completion, models.batch, models.completion,
                      models.embedding, models.responses, NewKey)  # fmt: skip
    _, defs = models_json_schema(
        [(m, "validation") for m in request_bodies], ref_template="#/components/schemas/{model}"
    )
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in defs.get("$defs", {}).items():
        schemas.setdefault(name, definition)
    schema["paths"] = {**routes_openai.openapi_paths(models),
                       **routes_more_apis.openapi_paths(models), **schema["paths"]}  # fmt: skip
    app.openapi_schema = schema
    return schema
