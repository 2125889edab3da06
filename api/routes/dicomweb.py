"""DICOMweb STOW-RS: ``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}`` (PS3.18 10.5), and the
PACS pull trigger ``POST /v1/pacs/pull/{study}`` (``create_pull_router``).

``create_dicomweb_router(accept, ...)`` builds the router; ``accept`` takes ownership of each checked instance
(in the server: the study collector). The body is streamed through the bounded parser of
:mod:`dicom_io.network.stow` into a scratch folder; the answer is the Store Instances Response as
``application/dicom+json`` (default) or ``application/dicom+xml`` per the Accept header, with status 200 (all
stored), 202 (some failed) or 409 (none stored), and one ``Warning: 299`` header per failed instance.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.auth import Right, require
from api.errors import ApiProblem
from dicom_io.errors import LimitExceededError
from dicom_io.limits import Limits
from dicom_io.network.instances import AcceptInstance
from dicom_io.network.stow import (
    DICOM_JSON,
    DICOM_XML,
    MultipartRelatedParser,
    StowLimits,
    parse_media_type,
    response_status,
    store_instances_response,
    store_parts,
    to_dicom_json,
    to_dicom_xml,
)

_FEED_BYTES = 1024 * 1024
_MAX_WARNINGS = 20
_STUDY_UID = r"^[0-9]+(\.[0-9]+)*$"


def negotiate(accept: str | None) -> str:
    """``application/dicom+json`` or ``application/dicom+xml`` from an Accept header (406 if neither fits)."""
    if not accept or not accept.strip():
        return DICOM_JSON
    best: tuple[float, int, str] | None = None
    for position, item in enumerate(accept.split(",")):
        kind, params = parse_media_type(item)
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 0.0
        for candidate in (DICOM_JSON, DICOM_XML):
            specific = kind == candidate or (kind == "application/json" and candidate == DICOM_JSON)
            wildcard = kind in ("*/*", "application/*") and candidate == DICOM_JSON
            if quality > 0 and (specific or wildcard):
                rank = (quality, -position if specific else -1000 - position, candidate)
                if best is None or rank > best:
                    best = rank
    if best is None:
        raise ApiProblem(
            406, "Not acceptable", f"Accept {accept[:100]!r} allows no response type; ask for {DICOM_JSON} or {DICOM_XML}"
        )
    return best[2]


def create_dicomweb_router(
    accept: AcceptInstance,
    *,
    scratch_dir: Path,
    limits: Limits,
    stow_limits: StowLimits | None = None,
    dependencies: Sequence[Any] | None = None,
    prefix: str = "/dicomweb",
) -> APIRouter:
    """The STOW-RS router. ``scratch_dir`` should be on the same filesystem as where ``accept`` moves files.

    ``dependencies`` default to an API key with the ``submit`` right (``api.auth.require``).
    """
    bounds = stow_limits or StowLimits()
    deps = list(dependencies) if dependencies is not None else [Depends(require(Right.submit))]
    router = APIRouter(prefix=prefix, tags=["dicomweb"], dependencies=deps)

    async def stow(request: Request, study: str | None) -> Response:
        media = negotiate(request.headers.get("accept"))
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > bounds.max_total_bytes:
            raise LimitExceededError(
                f"the STOW-RS body is larger than {bounds.max_total_bytes} bytes; send fewer instances per "
                "request or raise the limit"
            )
        Path(scratch_dir).mkdir(parents=True, exist_ok=True)
        scratch = Path(await run_in_threadpool(tempfile.mkdtemp, "", "stow-", str(scratch_dir)))
        try:
            parser = MultipartRelatedParser(request.headers.get("content-type", ""), scratch, bounds)
            pending: list[bytes] = []
            size = 0
            async for chunk in request.stream():
                pending.append(chunk)
                size += len(chunk)
                if size >= _FEED_BYTES:
                    await run_in_threadpool(parser.feed, b"".join(pending))
                    pending, size = [], 0
            await run_in_threadpool(parser.feed, b"".join(pending))
            parts = parser.close()
            outcomes = await run_in_threadpool(store_parts, parts, accept, limits, study_uid=study)
        finally:
            await run_in_threadpool(shutil.rmtree, scratch, True)
        dataset = store_instances_response(outcomes)
        body = to_dicom_xml(dataset) if media == DICOM_XML else to_dicom_json(dataset).encode()
        response = Response(body, status_code=response_status(outcomes), media_type=media)
        failed = [o for o in outcomes if not o.stored]
        for outcome in failed[:_MAX_WARNINGS]:
            text = outcome.detail.encode("ascii", "replace").decode().replace('"', "'")
            response.headers.append("Warning", f'299 radinfer "{text}"')
        return response

    summary = "Store instances (STOW-RS, multipart/related; type=\"application/dicom\")"
    responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "All instances stored", "content": {DICOM_JSON: {}, DICOM_XML: {}}},
        202: {"description": "Some instances stored; FailedSOPSequence lists the others"},
        409: {"description": "No instance stored; FailedSOPSequence gives the reasons"},
        413: {"description": "Too many parts, a part too large or the body too large"},
    }

    @router.post("/studies", summary=summary, responses=responses)
    async def store_instances(request: Request) -> Response:
        return await stow(request, None)

    @router.post("/studies/{study}", summary=summary + " into one study", responses=responses)
    async def store_study_instances(request: Request, study: str) -> Response:
        if len(study) > 64 or not re.match(_STUDY_UID, study):
            raise ApiProblem(400, "Invalid Study Instance UID", f"{study[:70]!r} is not a DICOM UID (digits and dots, at most 64)")
        return await stow(request, study)

    return router


def create_pull_router(
    pull: Callable[[str], str | None], *, dependencies: Sequence[Any] | None = None, prefix: str = "/v1/pacs"
) -> APIRouter:
    """``POST {prefix}/pull/{study}``: fetch a study from the configured PACS and queue it (202).

    ``pull(study_uid)`` returns the job id, or None when the study comes by C-MOVE and is queued on arrival.
    """
    deps = list(dependencies) if dependencies is not None else [Depends(require(Right.submit))]
    router = APIRouter(prefix=prefix, tags=["pacs"], dependencies=deps)

    @router.post("/pull/{study}", status_code=202, summary="Fetch a study from the PACS by StudyInstanceUID and analyze it")
    async def pull_study(study: str) -> Response:
        if len(study) > 64 or not re.match(_STUDY_UID, study):
            raise ApiProblem(400, "Invalid Study Instance UID", f"{study[:70]!r} is not a DICOM UID (digits and dots, at most 64)")
        try:
            job_id = await run_in_threadpool(pull, study)
        except LookupError as exc:  # StudyNotFoundError
            raise ApiProblem(404, "Study not found in the PACS", str(exc)) from None
        except ConnectionError as exc:  # DicomWebError, DimseError: the PACS failed or refused
            raise ApiProblem(502, "PACS retrieval failed", str(exc)) from None
        except ValueError as exc:  # nothing configured to pull from
            raise ApiProblem(409, "PACS pull not configured", str(exc)) from None
        if job_id is None:
            body = {"job_id": None, "detail": "C-MOVE done; the study is queued once all instances have arrived."}
            return JSONResponse(body, status_code=202)
        location = f"/v1/jobs/{job_id}"
        return JSONResponse({"job_id": job_id, "location": location}, status_code=202, headers={"Location": location})

    return router
