"""The wrapper's one authentication rule: ``Authorization: Bearer <VLLM_WRAPPER_API_KEY>``."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from .handlers import AuthError

__all__ = ["ApiKey", "require_api_key"]


async def require_api_key(request: Request) -> None:
    """Pass when no key is configured or the request carries it (compared in constant time)."""
    api_key: bytes | None = request.app.state.api_key
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key):
        raise AuthError()


ApiKey = Annotated[None, Depends(require_api_key)]
"""Add ``_: ApiKey`` to a route's parameters, or ``dependencies=[Depends(require_api_key)]``."""
