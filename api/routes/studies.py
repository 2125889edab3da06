"""Submitting a study: multipart files, a raw zip or a raw DICOM body; 202 with the job, or 200 with ?wait=."""

from __future__ import annotations

import shutil
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.deps import FilesDep, ServicesDep, SettingsDep, StoreDep, Submitter
from api.errors import PROBLEM_JSON, ApiProblem, Problem
from api.routes.jobs import failure_response
from api.upload import ACCEPTED_TYPES, media_type, receive_body, split_body
from inference.findings import FindingsReport
from inference.jobs.store import JobState

router = APIRouter(prefix="/v1/studies", tags=["studies"])

_POLL_S = 0.2


class Submitted(BaseModel):
    job_id: str = Field(examples=["3f2c6a1e9b8d4c7fa0e1d2c3b4a59687"])
    state: JobState = Field(examples=["queued"])
    model: str = Field(description="The model the study was routed to", examples=["lung_nodule"])
    location: str = Field(examples=["/v1/jobs/3f2c6a1e9b8d4c7fa0e1d2c3b4a59687"])


_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                },
                "example": "curl -F file=@slice1.dcm -F file=@slice2.dcm ...",
            },
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
            "application/dicom": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}} for code in (400, 401, 403, 404, 413, 415, 422, 503)
}


@router.post(
    "",
    status_code=202,
    summary="Submit a study (DICOM files, a zip, or one DICOM file) for analysis",
    description=(
        "Accepted bodies: " + ", ".join(ACCEPTED_TYPES) + ". The study is checked (header pass, limits), routed to a "
        "model by the bundles' selection rules (or `model`), stored durably and queued. With `wait`, the call "
        "answers 200 with the findings if the job finishes within that many seconds, else 202."
    ),
    response_model=Submitted,
    responses={**_PROBLEMS, 200: {"model": FindingsReport, "description": "Finished within `wait` seconds"}},
    openapi_extra=_BODY_DOC,
)
async def submit_study(
    request: Request,
    _: Submitter,
    services: ServicesDep,
    settings: SettingsDep,
    store: StoreDep,
    files: FilesDep,
    model: Annotated[str | None, Query(max_length=128, description="Model name; default: routed by rules")] = None,
    wait: Annotated[float, Query(ge=0, description="Seconds to wait for the result (<= RADINFER_MAX_WAIT_S)")] = 0,
) -> Any:
    if wait > settings.max_wait_s:
        raise ApiProblem(422, "Wait too long", f"wait={wait} exceeds RADINFER_MAX_WAIT_S={settings.max_wait_s}.")
    kind = media_type(request)
    await run_in_threadpool(services.check_capacity)
    scratch = await run_in_threadpool(files.new_staging_dir)
    try:
        body = scratch / "body"
        await receive_body(request, body, settings.max_upload_bytes)
        uploaded = await run_in_threadpool(
            split_body, body, kind, request.headers["content-type"], scratch / "parts", settings.max_files
        )
        job = await run_in_threadpool(services.accept, uploaded, model)
    finally:
        await run_in_threadpool(shutil.rmtree, scratch, True)
    location = f"/v1/jobs/{job.id}"
    with services.signals.watch(job.id) as finished, anyio.move_on_after(wait):
        while wait > 0:
            record = await run_in_threadpool(store.get, job.id)
            if record.state is JobState.succeeded:
                data = await anyio.Path(files.result_path(job.id)).read_bytes()
                report = FindingsReport.model_validate_json(data)
                return JSONResponse(report.model_dump(mode="json"), headers={"Location": location})
            if record.state is JobState.failed:
                return failure_response(request, record)
            if record.state.finished:
                break
            with anyio.move_on_after(_POLL_S):  # woken at once when this process's worker ends the job
                await finished.wait()
            finished.clear()
    record = await run_in_threadpool(store.get, job.id)
    body_out = Submitted(job_id=job.id, state=record.state, model=job.routed_model or "", location=location)
    return JSONResponse(body_out.model_dump(mode="json"), status_code=202, headers={"Location": location})
