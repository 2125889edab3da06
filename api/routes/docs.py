"""The OpenAPI document and Swagger UI, behind an API key like every other route but the health checks.

FastAPI's own ``/openapi.json`` and ``/docs`` are public and load Swagger UI from a CDN, which an air-gapped
hospital network cannot reach; they are switched off in ``create_app`` and served here instead, with Swagger UI's
script and style sheet from the installed ``fastapi-offline`` package. Any valid key may read them (the
``read_models`` right every role has). A browser does not send the key by itself: fetch the document with
``curl -H "Authorization: Bearer KEY" .../openapi.json``, or open ``/docs`` through a proxy or browser extension
that adds the header; the page's "Authorize" button then sends the key with "Try it out" calls.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from api.deps import ModelReader
from api.errors import ApiProblem

router = APIRouter(include_in_schema=False)

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}
_ASSET_DIR = files("fastapi_offline") / "static"


@router.get("/openapi.json")
def openapi(request: Request, _: ModelReader) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
def docs(request: Request, _: ModelReader) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{request.app.title} API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon.png",
    )


@router.get("/docs/assets/{name}")
def docs_asset(name: Annotated[str, Path(max_length=64)], _: ModelReader) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise ApiProblem(404, "Not found", f"No documentation asset {name!r}; there are {sorted(ASSETS)}.")
    return FileResponse(str(_ASSET_DIR / name), media_type=media_type, headers={"Cache-Control": "private, max-age=86400"})
