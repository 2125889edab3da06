"""The OpenAPI document and Swagger UI, behind an API key like every other route but the health checks.

FastAPI's own ``/openapi.json`` and ``/docs`` are public; they are switched off in ``create_app`` and served
here instead. Any valid key may read them (the ``read_models`` right every role has). A browser does not send
the key by itself: fetch the document with ``curl -H "Authorization: Bearer KEY" .../openapi.json``, or open
``/docs`` through a proxy or browser extension that adds the header.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from api.deps import ModelReader

router = APIRouter(include_in_schema=False)


@router.get("/openapi.json")
def openapi(request: Request, _: ModelReader) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
def docs(request: Request, _: ModelReader) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} API")
