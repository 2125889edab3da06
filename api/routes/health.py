"""Liveness and readiness (no authentication: orchestrators call these)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import ServicesDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    ready: bool
    device: str | None = Field(default=None, examples=["cuda:0", "cpu"])
    models: list[str] = Field(default_factory=list, examples=[["lung_nodules_ct"]])
    decoders: dict[str, bool] = Field(
        default_factory=dict, description="Transfer syntax name -> whether its pixel data can be decoded"
    )
    error: str | None = Field(default=None, description="Why the models failed to load, if they did")


# HEAD too: load balancers and `curl -I` probe with it (a GET-only route answers it 405). Each method has its own
# operation id: one route for both gave them the same, which client generators refuse.
@router.get("/healthz", response_model=Health, summary="The process is up", operation_id="healthz")
@router.head("/healthz", summary="The process is up (no body)", operation_id="healthz_head")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Models are loaded and warmed",
    responses={503: {"model": Readiness, "description": "Models are still loading, or failed to load"}},
    operation_id="readyz",
)
@router.head("/readyz", summary="Models are loaded and warmed (no body)", operation_id="readyz_head",
             responses={503: {"description": "Models are still loading, or failed to load"}})
def readyz(services: ServicesDep) -> JSONResponse:
    readiness = Readiness(**services.readiness())
    return JSONResponse(readiness.model_dump(), status_code=200 if readiness.ready else 503)
