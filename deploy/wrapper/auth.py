"""Who is asking: ``Authorization: Bearer <key>`` against the gateway's named keys.

``require_api_key`` puts the caller's ``KeyRecord`` on ``request.state.caller``;
``require_admin`` also wants the admin role (usage of every key, key management, metrics).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..core.logs import wake_cause
from ..gateway import Gateway, KeyRecord
from .handlers import AuthError, Forbidden

__all__ = ["Admin", "ApiKey", "Caller", "require_admin", "require_api_key"]


async def require_api_key(request: Request) -> KeyRecord:
    """The caller's key (constant-time comparisons); ``AuthError`` when none matches,
    ``StoreUnavailable`` (503) when the state store must be read to know."""
    gateway: Gateway = request.app.state.gateway
    caller = await gateway.authenticate(request.headers.get("authorization", ""))
    if caller is None:
        raise AuthError()
    request.state.caller = caller
    # An engine this request starts says whose request woke it (the transport's log).
    wake_cause.set(f"a request by key {caller.name!r} ({request.url.path})")
    return caller


async def require_admin(request: Request) -> KeyRecord:
    caller = await require_api_key(request)
    if not caller.is_admin:
        raise Forbidden(f"key {caller.name!r} is not an admin key")
    return caller


Caller = Annotated[KeyRecord, Depends(require_api_key)]
"""A route parameter ``caller: Caller`` is the authenticated key."""
ApiKey = Caller  # ``_: ApiKey``: the route needs a key, and does not read it
Admin = Annotated[KeyRecord, Depends(require_admin)]
