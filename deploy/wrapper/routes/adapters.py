"""LoRA adapters at run time (admin): ``POST /v1/adapters`` loads one on a served model's
engine, ``DELETE /v1/adapters/{name}`` unloads it (a Hub-style ``org/name`` too). Neither
starts a cold engine: the transport remembers the adapter and the next start serves it.

The key is checked before the body is read (no key, no parsing), and both forget the
response cache's answers under the adapter's name: new weights under an old name must not
be answered with the old ones."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ...core.contract import AdapterHost
from ..auth import Admin
from ..handlers import InvalidRequest, parse_body
from ..responses import ADMIN_ERRORS, errors
from ..serving.registry import ModelRegistry

__all__ = ["NewAdapter", "router"]

router = APIRouter(responses=ADMIN_ERRORS)


class NewAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no true for 1: say what you mean

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,127}$")
    """What requests will say in ``model``."""
    path: str = Field(min_length=1)
    """Where the engine reads it: a folder it can see (locally, or on the models Volume)."""
    base: str | None = None
    """The served model it adapts (default: the default model)."""


_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": NewAdapter.model_json_schema()}},
    }
}


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.models  # type: ignore[no-any-return]


def _forget_cached(request: Request, name: str) -> None:
    cache = request.app.state.gateway.cache
    if cache is not None:
        cache.drop_model(name)


@router.post(
    "/v1/adapters",
    status_code=HTTPStatus.CREATED,
    responses=errors(400, 404, 409, 422, 503),
    openapi_extra=_BODY,
)
async def load_adapter(request: Request, _: Admin) -> dict[str, Any]:
    new = parse_body(NewAdapter, await request.body())  # after the admin key is checked
    registry = _registry(request)
    if new.name in registry.names():
        raise InvalidRequest(f"{new.name!r} is served already", "name", HTTPStatus.CONFLICT)
    served, _name = registry.resolve(new.base, "base")
    if served.name != (new.base or served.name):  # an adapter is not a base
        raise InvalidRequest(f"{new.base!r} is an adapter, not a model", "base",
                             HTTPStatus.BAD_REQUEST)  # fmt: skip
    if not isinstance(served.transport, AdapterHost):
        raise InvalidRequest(f"model {served.name!r} cannot load adapters here", "base",
                             HTTPStatus.BAD_REQUEST)  # fmt: skip
    await served.transport.load_adapter(new.name, new.path)
    _forget_cached(request, new.name)
    registry.add_adapter(new.name, served.name, new.path)
    return {"id": new.name, "object": "model", "parent": served.name, "root": new.path}


@router.delete("/v1/adapters/{name:path}", status_code=HTTPStatus.NO_CONTENT,
               responses=errors(400, 404, 503))  # fmt: skip
async def unload_adapter(request: Request, name: str, _: Admin) -> Response:
    registry = _registry(request)
    if name not in registry.adapters:
        raise InvalidRequest(f"no adapter named {name!r}", "name", HTTPStatus.NOT_FOUND)
    served = registry.models[registry.adapters[name][0]]
    if not isinstance(served.transport, AdapterHost):  # declared in settings, fixed there
        raise InvalidRequest(f"model {served.name!r} cannot unload adapters here", "name",
                             HTTPStatus.BAD_REQUEST)  # fmt: skip
    await served.transport.unload_adapter(name)
    registry.remove_adapter(name)
    _forget_cached(request, name)
    return Response(status_code=HTTPStatus.NO_CONTENT)
