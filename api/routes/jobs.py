"""Jobs: status, listing, result, artifacts, cancel and delete."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from api.deps import FilesDep, JobAdmin, JobLister, JobReader, ServicesDep, StoreDep, WorkerDep
from api.errors import PROBLEM_JSON, ApiProblem, Problem, problem_response
from inference.errors import JobStateError
from inference.findings import FindingsReport
from inference.jobs.files import JobFiles
from inference.jobs.store import JobRecord, JobState

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="Job id (32 hex digits)")]
ArtifactName = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="Artifact file name", examples=["seg.dcm"])
]
MAX_OFFSET = 2**31 - 1  # an offset past 64 bits made SQLite raise OverflowError (a 500); no store holds more jobs
PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}} for code in (401, 403, 404, 409, 422)
}


class Job(BaseModel):
    """A job as clients see it. ``timings`` holds seconds per stage once known."""

    id: str = Field(examples=["3f2c6a1e9b8d4c7fa0e1d2c3b4a59687"])
    state: JobState
    stage: str = Field(examples=["inference"])
    progress: float = Field(ge=0, le=1, examples=[0.4])
    model: str | None = Field(default=None, description="Model requested by the client, if any")
    routed_model: str | None = Field(default=None, description="Model chosen for the study")
    study_instance_uid: str | None = None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    timings: dict[str, float] = Field(default_factory=dict, examples=[{"read": 0.8, "inference": 3.1}])
    error: dict[str, Any] | None = Field(default=None, description="Problem details when the job failed")
    priority: int = Field(description="0 interactive, 10 bulk (evaluations); lower runs first")
    delivery: dict[str, Any] | None = Field(
        default=None,
        description="Result delivery per configured destination (RADINFER_DESTINATIONS): state pending, delivered "
        "or failed, attempts, instances sent, last error",
        examples=[{"dicomweb+http://127.0.0.1:8042/dicom-web": {"state": "delivered", "attempts": 1}}],
    )
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    links: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, record: JobRecord) -> Job:
        data = record.to_public()
        base = f"/v1/jobs/{record.id}"
        data["links"] = {"self": base, "result": base + "/result"}
        return cls.model_validate(data)


class JobPage(BaseModel):
    items: list[Job]
    total: int
    limit: int
    offset: int


@router.get("", response_model=JobPage, summary="List jobs, newest first", responses=PROBLEMS)
def list_jobs(
    _: JobLister,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    state: JobState | None = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    study: Annotated[str | None, Query(max_length=64, description="StudyInstanceUID")] = None,
) -> JobPage:
    records, total = store.list(state=state, model=model, study_instance_uid=study, limit=limit, offset=offset)
    return JobPage(items=[Job.of(r) for r in records], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=Job, summary="Job status, stage, progress and timings", responses=PROBLEMS)
def get_job(job_id: JobId, _: JobReader, store: StoreDep) -> Job:
    return Job.of(store.get(job_id))


@router.get(
    "/{job_id}/result",
    response_model=FindingsReport,
    summary="The findings of a finished job",
    responses={**PROBLEMS, 500: {"model": Problem, "description": "The job failed on the server"}},
)
def get_result(job_id: JobId, _: JobReader, store: StoreDep, files: FilesDep, request: Request) -> Any:
    record = store.get(job_id)
    if record.state is JobState.succeeded:
        return _report(files, job_id)
    if record.state is JobState.failed:
        return failure_response(request, record)
    if record.state is JobState.cancelled:
        raise JobStateError(f"Job {job_id} was cancelled; it has no result.")
    raise ApiProblem(
        409,
        "Job not finished",
        f"Job {job_id} is {record.state.value} (stage {record.stage}); poll /v1/jobs/{job_id} until it succeeded.",
        slug="job-not-finished",
        headers={"Retry-After": "2"},
    )


def failure_response(request: Request, record: JobRecord) -> JSONResponse:
    """The stored problem of a failed job, as the answer to a result request."""
    error = dict(record.error or {})
    status = int(error.get("status") or 500)
    return problem_response(
        request,
        status,
        str(error.get("title") or "Job failed"),
        str(error.get("detail") or f"Job {record.id} failed."),
    )


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=FileResponse,
    summary="Download an artifact (DICOM SEG, SR, secondary capture...) of a succeeded job",
    responses={**PROBLEMS, 200: {"content": {"application/dicom": {}, "application/octet-stream": {}}}},
)
def get_artifact(job_id: JobId, name: ArtifactName, _: JobReader, store: StoreDep, files: FilesDep) -> FileResponse:
    store.get(job_id)  # 404 for an unknown job
    # only what the job's report lists is served, with the media type it gives
    listed = {a.name: a.media_type for a in _report(files, job_id).artifacts} if files.has_output(job_id) else {}
    try:
        path = files.artifact_path(job_id, name)
    except (FileNotFoundError, ValueError):
        path = None
    if path is None or name not in listed:
        raise ApiProblem(
            404, "Unknown artifact", f"Job {job_id} has no artifact {name!r}; its result lists the artifacts."
        )
    return FileResponse(path, media_type=listed[name], filename=name)


def _report(files: JobFiles, job_id: str) -> FindingsReport:
    return FindingsReport.model_validate_json(files.result_path(job_id).read_bytes())


@router.post(
    "/{job_id}/delivery",
    response_model=Job,
    status_code=202,
    summary="Send a succeeded job's DICOM results again to the destinations that have not confirmed them",
    description=(
        "Schedules the results for every destination not `delivered` (one waiting out a back-off is tried at once); "
        "with `force=true` for every destination. 409 while an attempt is under way, when every destination "
        "already confirmed them (without `force`), or with no destination configured."
    ),
    responses=PROBLEMS,
)
def redeliver(
    job_id: JobId,
    _: JobAdmin,
    store: StoreDep,
    services: ServicesDep,
    force: Annotated[bool, Query(description="Send to delivered destinations too (the PACS lost the results)")] = False,
) -> Job:
    services.pacs.redeliver(job_id, force=force)
    return Job.of(store.get(job_id))


@router.delete(
    "/{job_id}",
    summary="Cancel a queued or running job, or delete a finished one with its files",
    status_code=204,
    responses={
        **PROBLEMS,
        200: {"model": Job, "description": "The queued job was cancelled"},
        202: {"model": Job, "description": "Cancellation of the running job was requested"},
        204: {"description": "The finished job and its files were deleted"},
    },
)
def delete_job(
    job_id: JobId, _: JobAdmin, store: StoreDep, files: FilesDep, worker: WorkerDep, services: ServicesDep
) -> Response:
    record = store.get(job_id)
    if not record.state.finished:
        record = store.request_cancel(job_id)
        worker.wake()
        status = 200 if record.state is JobState.cancelled else 202
        return JSONResponse(Job.of(record).model_dump(mode="json"), status_code=status)
    store.delete(job_id)
    services.pacs.delivery.cancel(job_id)  # a pending delivery of its results stops at once
    files.remove(job_id)
    return Response(status_code=204)
