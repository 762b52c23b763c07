"""The error answers each route documents in the OpenAPI schema (all in OpenAI's shape)."""

from __future__ import annotations

from typing import Any

from .protocol import ErrorResponse

__all__ = ["ADMIN_ERRORS", "AUTH_ERRORS", "INFERENCE_ERRORS", "errors", "json_body"]

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorResponse}}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 403)
}
INFERENCE_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 422, 429, 503)
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """More documented error answers for one route."""
    return {status: {"model": ErrorResponse} for status in statuses}


def json_body(model: type) -> dict[str, Any]:
    """OpenAPI for a route that reads its JSON body itself (after auth), with ``model``."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}
