"""The one table mapping domain errors to HTTP statuses and RFC 9457 problem details (application/problem+json).

Client mistakes are 4xx, never 5xx: dicom_io's InputRejected carries its own status and title; inference errors
are mapped in ``_INFERENCE_TABLE``; FastAPI validation errors become 422 with an ``errors`` list; unknown routes and
wrong methods keep Starlette's 404/405. Overload is 503 with Retry-After. Anything unexpected is a 500 whose body
holds only the request id; the log gets its type and frame locations, never its message.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from dicom_io.errors import InputRejected
from inference.errors import (
    PROBLEM_TYPE_BASE,
    BundleError,
    InferenceError,
    JobNotFoundError,
    JobStateError,
    ModelNotFoundError,
    NoModelForStudyError,
    QueueFullError,
    RetryableInferenceError,
    frame_locations,
    problem_type,
)

log = logging.getLogger("radinfer.api")

PROBLEM_JSON = "application/problem+json"

# Inference error class -> (status, title). Checked in order (subclasses first).
_INFERENCE_TABLE: list[tuple[type[InferenceError], int, str]] = [
    (ModelNotFoundError, 404, "Unknown model"),
    (JobNotFoundError, 404, "Unknown job"),
    (NoModelForStudyError, 422, "No model accepts this study"),
    (JobStateError, 409, "Operation not valid in the job's state"),
    (QueueFullError, 503, "Job queue is full"),
    (RetryableInferenceError, 503, "Temporarily unavailable"),
    (BundleError, 500, "Model bundle is invalid"),
]


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(examples=[PROBLEM_TYPE_BASE + "not-a-dicom-file"])
    title: str = Field(examples=["Not a DICOM file"])
    status: int = Field(examples=[415])
    detail: str = Field(examples=["upload.bin: the file has no DICM preamble; send DICOM Part 10 files."])
    instance: str = Field(examples=["/v1/studies"])
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = Field(default=None, description="Validation errors (422 only)")


class ApiProblem(Exception):
    """A problem raised at the HTTP edge (auth, upload framing, wait bounds)."""

    def __init__(
        self, status: int, title: str, detail: str, *, headers: dict[str, str] | None = None, slug: str | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.headers = headers or {}
        self.slug = slug


def problem_response(
    request: Request,
    status: int,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    slug: str | None = None,
    **extra: Any,
) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    body = Problem(
        type=PROBLEM_TYPE_BASE + slug if slug else problem_type(title),
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
        request_id=request_id,
        **extra,
    ).model_dump(exclude_none=True)
    all_headers = dict(headers or {})
    if request_id:
        all_headers["X-Request-ID"] = request_id
    return JSONResponse(body, status_code=status, headers=all_headers, media_type=PROBLEM_JSON)


def inference_status(exc: InferenceError) -> tuple[int, str]:
    for cls, status, title in _INFERENCE_TABLE:
        if isinstance(exc, cls):
            return status, title
    return 500, "Inference failed"


async def _input_rejected(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputRejected)
    return problem_response(request, exc.status, exc.title, str(exc))


async def _inference_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InferenceError)
    status, title = inference_status(exc)
    if status >= 500 and not isinstance(exc, (QueueFullError, RetryableInferenceError)):
        log.error("inference error", exc_info=exc)
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QueueFullError) else None
    return problem_response(request, status, title, str(exc), headers=headers)


async def _api_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiProblem)
    return problem_response(request, exc.status, exc.title, exc.detail, headers=exc.headers, slug=exc.slug)


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    title = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else _http_detail(request, exc)
    return problem_response(request, exc.status_code, title, detail, headers=exc.headers)


def _http_detail(request: Request, exc: StarletteHTTPException) -> str:
    if exc.status_code == 404:
        return f"No route {request.url.path}; see /docs for the API."
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}."
    return HTTPStatus(exc.status_code).description


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    detail = f"{'.'.join(first['loc'])}: {first['msg']}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
    return problem_response(request, 422, "Request validation failed", detail, errors=errors)


def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """The 500 for an error no handler knows; the log gets its type and frame locations, never its message
    (which may quote dataset values). Called by RequestContextMiddleware, which does not re-raise: Starlette's
    own handler for ``Exception`` re-raises to the server, which then logs the full message."""
    request_id = getattr(request.state, "request_id", "-")
    log.error("unhandled %s on %s\n%s", type(exc).__name__, request.url.path, frame_locations(exc),
              extra={"request_id": request_id})
    return problem_response(
        request, 500, "Internal server error", f"An unexpected error occurred; quote request id {request_id}."
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(InputRejected, _input_rejected)
    app.add_exception_handler(InferenceError, _inference_error)
    app.add_exception_handler(ApiProblem, _api_problem)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
