"""The API's documentation behind the key: ``/openapi.json``, ``/docs``, ``/redoc``.

Mounted when a key is set and ``VLLM_PUBLIC_DOCS`` is not: then every route but ``/`` and
``/health`` needs the key, the documentation included (FastAPI's own docs routes are off).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from ..auth import require_api_key
from ..responses import AUTH_ERRORS

__all__ = ["router"]

router = APIRouter(
    dependencies=[Depends(require_api_key)], responses=AUTH_ERRORS, include_in_schema=False
)


@router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title=request.app.title)


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url="/openapi.json", title=request.app.title)
