"""Evaluations on the server: run a model over a labelled data set that already lies on the server.

``POST /v1/evaluations`` answers 202 with an id at once; a background thread submits the cases one by one
(``workers`` at a time) as jobs at bulk priority, so clinical requests keep overtaking them in the queue, and
writes the outputs of ``radinfer evaluate`` under ``<output_dir>/<id>/``. ``GET /v1/evaluations/{id}``
reports state, progress and, once finished, the metrics; ``GET .../report`` serves the HTML report. An
evaluation cut short by a server stop shows as ``interrupted``; ``POST .../resume`` continues it without
running the cases already scored.
Data and labels are server paths and must lie under one of ``allowed_roots``; only admin keys may evaluate.

Wiring: ``app.include_router(evaluations_router(allowed_roots=..., output_dir=settings.data_dir / "evaluations"))``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from api.auth import Principal, authenticate
from api.deps import ServicesDep
from api.errors import PROBLEM_JSON, ApiProblem, Problem

log = logging.getLogger("radinfer.api")

STATUS_FILE = "status.json"
EvaluationId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="Evaluation id (32 hex digits)")]
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}} for code in (401, 403, 404, 422)
}


def require_admin(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """Evaluations read server paths and load the queue: admin keys only."""
    if principal.role != "admin":
        raise ApiProblem(
            403, "Forbidden", f"The {principal.role!r} role may not run evaluations; use an admin key."
        )
    return principal


Admin = Annotated[Principal, Depends(require_admin)]


class EvaluationRequest(BaseModel):
    model: str = Field(max_length=128, examples=["lung_nodule"])
    data_dir: str = Field(description="Server folder with one case per entry (sub-folder, zip or DICOM file)")
    labels: str = Field(description="Server path of a CSV, a nodule JSON or a folder of masks")
    kind: Literal["classification", "multiclass", "regression", "detection", "segmentation"] | None = None
    prediction: str | None = Field(default=None, description="summary.<key> or max_confidence")
    positive: str | None = None
    threshold: float | None = None
    within: float | None = None
    surface_tolerance_mm: float | None = Field(default=None, gt=0)
    finding_label: str | None = None


class Evaluation(BaseModel):
    id: str
    state: Literal["queued", "running", "succeeded", "failed", "interrupted"]
    model: str
    done: int = 0
    total: int | None = None
    progress: float = Field(0.0, ge=0, le=1)
    created_at: str
    finished_at: str | None = None
    error: str | None = None
    counts: dict[str, int] | None = None
    metrics: dict[str, Any] | None = Field(
        default=None, description="The metrics JSON once finished (also when failed because no case was scored)"
    )
    request: dict[str, Any] = Field(
        default_factory=dict, description="The request, with resolved server paths"
    )
    links: dict[str, str] = Field(default_factory=dict)


class _Evaluations:
    """State of the evaluations of this process, mirrored to ``<output_dir>/<id>/status.json``."""

    def __init__(self, output_dir: FilePath) -> None:
        self.output_dir = output_dir
        self.lock = threading.Lock()
        self.live: dict[str, dict[str, Any]] = {}

    def save(self, status: dict[str, Any]) -> None:
        folder = self.output_dir / status["id"]
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{STATUS_FILE}.tmp"
        tmp.write_text(json.dumps(status), encoding="utf-8")
        os.replace(tmp, folder / STATUS_FILE)

    def update(self, evaluation_id: str, **values: Any) -> None:
        with self.lock:
            status = self.live[evaluation_id]
            status.update(values)
            self.save(dict(status))

    def get(self, evaluation_id: str) -> dict[str, Any]:
        with self.lock:
            if evaluation_id in self.live:
                return dict(self.live[evaluation_id])
        path = self.output_dir / evaluation_id / STATUS_FILE
        if not path.is_file():
            raise ApiProblem(404, "Unknown evaluation", f"No evaluation with id {evaluation_id!r}.")
        status = json.loads(path.read_text(encoding="utf-8"))
        if status["state"] in ("queued", "running"):  # its thread died with an earlier server process
            status.update(
                state="interrupted",
                error=f"The server stopped during this evaluation; POST /v1/evaluations/{evaluation_id}/resume "
                "continues it without running the cases already scored.",
            )
        return status


_STATE_PHRASES = {"succeeded": "has succeeded", "failed": "has failed", "interrupted": "was interrupted"}


def _state_phrase(status: dict[str, Any]) -> str:
    """The state as a predicate after "Evaluation <id>": is running, has succeeded, was interrupted..."""
    return _STATE_PHRASES.get(status["state"], f"is {status['state']}")


def _under_roots(value: str, roots: Sequence[FilePath], field: str) -> FilePath:
    path = FilePath(value).resolve()
    if not any(path.is_relative_to(root) for root in roots):
        raise ApiProblem(
            403,
            "Path not allowed",
            f"{field} must lie under an allowed evaluation root; "
            "ask the administrator to add its folder to the evaluation roots.",
        )
    if not path.exists():
        raise ApiProblem(422, "Path not found", f"{field} {value!r} does not exist on the server.")
    return path


def evaluations_router(
    *, allowed_roots: Sequence[FilePath], output_dir: FilePath, workers: int = 1
) -> APIRouter:
    """The /v1/evaluations routes. With no ``allowed_roots`` every submission is refused (403)."""
    roots = [FilePath(r).resolve() for r in allowed_roots]
    state = _Evaluations(FilePath(output_dir))
    router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])

    def view(status: dict[str, Any]) -> Evaluation:
        base = f"/v1/evaluations/{status['id']}"
        links = {"self": base}
        if status.get("metrics") is not None:  # also a failed one that scored no case: its label account
            links["report"] = base + "/report"
        return Evaluation(**status, links=links)

    @router.post(
        "",
        status_code=202,
        response_model=Evaluation,
        responses=_PROBLEMS,
        summary="Evaluate a model on a labelled data set on the server (runs in the background)",
    )
    def create_evaluation(body: EvaluationRequest, _: Admin, services: ServicesDep) -> Evaluation:
        if not roots:
            raise ApiProblem(403, "Evaluations disabled", "No evaluation root is configured on this server.")
        data_dir = _under_roots(body.data_dir, roots, "data_dir")
        labels = _under_roots(body.labels, roots, "labels")
        bundle = services.registry.get(body.model)  # 404 for an unknown model
        request = {
            **body.model_dump(),
            "model": bundle.name,
            "data_dir": str(data_dir),
            "labels": str(labels),
        }
        _check_inputs(bundle, request)
        status = {
            "id": uuid.uuid4().hex,
            "model": bundle.name,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "request": request,
        }
        return view(start(status, services))

    @router.post(
        "/{evaluation_id}/resume",
        status_code=202,
        response_model=Evaluation,
        responses={**_PROBLEMS, 409: {"model": Problem, "content": {PROBLEM_JSON: {}}}},
        summary="Resume an interrupted or failed evaluation; cases already scored are not run again",
    )
    def resume_evaluation(evaluation_id: EvaluationId, _: Admin, services: ServicesDep) -> Evaluation:
        status = state.get(evaluation_id)
        if status["state"] not in ("interrupted", "failed"):
            raise ApiProblem(
                409,
                "Evaluation not resumable",
                f"Evaluation {evaluation_id} {_state_phrase(status)}; "
                "only interrupted or failed evaluations can be resumed.",
            )
        for field in ("data_dir", "labels"):
            _under_roots(status["request"][field], roots, field)
        services.registry.get(status["model"])
        return view(start(status, services))

    def start(status: dict[str, Any], services: Any) -> dict[str, Any]:
        """Record ``status`` as queued and start its background thread."""
        request = status["request"]
        status = {
            **status,
            "state": "queued",
            "done": 0,
            "total": None,
            "progress": 0.0,
            "error": None,
            "finished_at": None,
            "metrics": None,
            "counts": None,
        }
        with state.lock:
            if state.live.get(status["id"], {}).get("state") in ("queued", "running"):
                raise ApiProblem(409, "Evaluation running", f"Evaluation {status['id']} is already running.")
            state.live[status["id"]] = status
            state.save(dict(status))
        overrides = _overrides(request)
        thread = threading.Thread(
            target=_run,
            name=f"radinfer-evaluation-{status['id'][:8]}",
            daemon=True,
            args=(
                state,
                services,
                status["id"],
                status["model"],
                FilePath(request["data_dir"]),
                FilePath(request["labels"]),
                overrides,
                workers,
            ),
        )
        thread.start()
        log.info("evaluation %s of model %s started", status["id"], status["model"])
        return status

    @router.get(
        "/{evaluation_id}",
        response_model=Evaluation,
        responses=_PROBLEMS,
        summary="State, progress and (when finished) metrics of an evaluation",
    )
    def get_evaluation(evaluation_id: EvaluationId, _: Admin) -> Evaluation:
        return view(state.get(evaluation_id))

    @router.get(
        "/{evaluation_id}/report",
        response_class=FileResponse,
        responses=_PROBLEMS,
        summary="The self-contained HTML report of a finished evaluation",
    )
    def get_report(evaluation_id: EvaluationId, _: Admin) -> FileResponse:
        from inference.evaluation.report import REPORT_HTML

        status = state.get(evaluation_id)
        path = state.output_dir / evaluation_id / REPORT_HTML
        if status.get("metrics") is None or not path.is_file():
            raise ApiProblem(
                409, "Evaluation not finished", f"Evaluation {evaluation_id} {_state_phrase(status)}."
            )
        return FileResponse(path, media_type="text/html")

    return router


def _overrides(request: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in request.items() if k not in ("model", "data_dir", "labels")}


def _check_inputs(bundle: Any, request: dict[str, Any]) -> None:
    """422 now for a data folder, label file or option the evaluation could not use (else it would be
    accepted with 202 and only fail later in the background)."""
    from inference.evaluation.evaluate import check_inputs

    try:
        check_inputs(
            bundle, FilePath(request["data_dir"]), FilePath(request["labels"]), _overrides(request)
        )
    except (ValueError, FileNotFoundError) as exc:
        raise ApiProblem(422, "Unusable evaluation input", str(exc)) from None


def _run(
    state: _Evaluations,
    services: Any,
    evaluation_id: str,
    model: str,
    data_dir: FilePath,
    labels: FilePath,
    overrides: dict[str, Any],
    workers: int,
) -> None:
    """The background thread: load the model (or wait for the loader), then evaluate through the job store."""
    from dicom_io.errors import InputRejected
    from inference.errors import InferenceError
    from inference.evaluation.evaluate import evaluate
    from inference.evaluation.runner import JobStoreAnalyzer

    def progress(done: int, total: int, _record: dict[str, Any] | None) -> None:
        state.update(evaluation_id, done=done, total=total, progress=done / total if total else 1.0)

    try:
        state.update(evaluation_id, state="running")
        bundle = services.registry.get(model)
        services.engine.ensure_loaded(bundle)
        analyzer = JobStoreAnalyzer(services.store, services.files, services.worker, model)
        metrics, _paths = evaluate(
            bundle,
            analyzer,
            data_dir,
            labels,
            state.output_dir / evaluation_id,
            overrides=overrides,
            workers=workers,
            progress=progress,
        )
    except (ValueError, FileNotFoundError, InputRejected, InferenceError) as exc:
        state.update(evaluation_id, state="failed", error=str(exc), finished_at=_now())
        return
    except Exception as exc:
        log.error("evaluation %s failed with %s", evaluation_id, type(exc).__name__, exc_info=exc)
        state.update(
            evaluation_id,
            state="failed",
            error=f"internal error ({type(exc).__name__}); see the server log",
            finished_at=_now(),
        )
        return
    failed = metrics["counts"]["scored"] == 0
    state.update(
        evaluation_id,
        state="failed" if failed else "succeeded",
        error="No case could be scored; see the label account in the report." if failed else None,
        metrics=metrics,
        counts=metrics["counts"],
        finished_at=_now(),
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
