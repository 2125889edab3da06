"""Receiving a study: stream the request body to disk with a byte counter, then split it into files.

Nothing is held in memory beyond one buffer: the body goes to ``<staging>/body`` (413 as soon as the count passes
``max_upload_bytes``), and multipart bodies are parsed *from that file* with python-multipart's streaming parser,
each part written to its own file. Accepted bodies: ``multipart/form-data`` (each file part a DICOM file or a zip),
``application/zip`` and ``application/dicom``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from api.errors import ApiProblem
from api.logging import sanitize_filename
from dicom_io.archive import is_zip
from dicom_io.errors import LimitExceededError

ACCEPTED_TYPES = ("multipart/form-data", "application/zip", "application/dicom")
_FLUSH_BYTES = 1024 * 1024
_READ_BYTES = 1024 * 1024
BODY_IDLE_TIMEOUT_S = 60.0


def _too_large(max_bytes: int) -> LimitExceededError:
    return LimitExceededError(
        f"the request body is larger than RADINFER_MAX_UPLOAD_BYTES={max_bytes}; send a smaller study or raise the limit"
    )


def media_type(request: Request) -> str:
    ctype = request.headers.get("content-type", "")
    kind = ctype.split(";", 1)[0].strip().lower()
    if kind not in ACCEPTED_TYPES:
        raise ApiProblem(
            415,
            "Unsupported media type",
            f"Content-Type {kind or '(none)'!r} is not accepted; send {', '.join(ACCEPTED_TYPES)}.",
        )
    return kind


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    """The body's chunks; 408 when none arrives for BODY_IDLE_TIMEOUT_S (uvicorn has no body timeout: a client
    that stops sending would hold the request, its staging folder and its connection for ever), 400 when the
    client goes away mid-body (a client mistake, not an unhandled server error)."""
    stream = request.stream()
    while True:
        try:
            with anyio.fail_after(BODY_IDLE_TIMEOUT_S):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiProblem(
                408,
                "Request timeout",
                f"No body data arrived for {BODY_IDLE_TIMEOUT_S:g} s; send the whole body without pauses.",
                headers={"Connection": "close"},
            ) from None
        except ClientDisconnect:
            raise ApiProblem(400, "Incomplete request body", "The client closed the connection mid-body.") from None
        yield chunk


async def receive_body(request: Request, dest: Path, max_bytes: int) -> int:
    """Stream the request body into ``dest``; 413 past ``max_bytes`` (checked on Content-Length and while reading)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    total = 0
    buffer: list[bytes] = []
    buffered = 0
    async with await anyio.open_file(dest, "wb") as fh:
        async for chunk in _chunks(request):
            total += len(chunk)
            if total > max_bytes:
                raise _too_large(max_bytes)
            buffer.append(chunk)
            buffered += len(chunk)
            if buffered >= _FLUSH_BYTES:
                await fh.write(b"".join(buffer))
                buffer, buffered = [], 0
        if buffer:
            await fh.write(b"".join(buffer))
    return total


def split_multipart(body: Path, content_type: str, out_dir: Path, max_parts: int) -> list[Path]:
    """Write each file part of a multipart/form-data body (read from disk) to ``out_dir/NNNNN/<safe name>``."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiProblem(400, "Malformed multipart body", "The multipart Content-Type has no boundary parameter.")
    parts: list[Path] = []
    state: dict = {"headers": {}, "field": b"", "value": b"", "fh": None}

    def on_part_begin() -> None:
        state["headers"] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        disposition, options = parse_options_header(state["headers"].get("content-disposition", b""))
        filename = options.get(b"filename")
        field = options.get(b"name", b"").decode("latin-1")
        if disposition != b"form-data" or filename is None:
            raise ApiProblem(
                422,
                "Form field is not a file",
                f"Form field {sanitize_filename(field)!r} is not a file; send DICOM files or zips as file parts "
                "and options as query parameters (e.g. ?model=NAME).",
            )
        if len(parts) >= max_parts:
            raise LimitExceededError(f"more than {max_parts} file parts; send at most RADINFER_MAX_FILES files")
        name = _part_name(filename)
        folder = out_dir / f"{len(parts):05d}"
        folder.mkdir(parents=True)
        path = folder / name
        parts.append(path)
        state["fh"] = open(path, "wb")  # noqa: SIM115 - closed in on_part_end (or finally below)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["fh"].write(data[start:end])

    def on_part_end() -> None:
        state["fh"].close()
        state["fh"] = None

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        with open(body, "rb") as fh:
            while chunk := fh.read(_READ_BYTES):
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiProblem(400, "Malformed multipart body", f"The multipart body could not be parsed: {exc}.") from exc
    finally:
        if state["fh"] is not None:
            state["fh"].close()
    if not parts:
        raise ApiProblem(422, "No file in the request", "The multipart body has no file part; attach DICOM files or a zip.")
    return parts


def _part_name(filename: bytes) -> str:
    """A safe file name for a part: '.', '..' would name the part's folder or its parent, and a leading dot would
    make the unpacker skip the file as hidden (a part is a file the client chose to send, never OS clutter)."""
    return sanitize_filename(filename.decode("utf-8", "replace")).lstrip(".") or "file"


def split_body(body: Path, kind: str, content_type: str, out_dir: Path, max_parts: int) -> list[Path]:
    """The uploaded files, whatever the body's media type (raw zip or DICOM bodies keep their own file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "multipart/form-data":
        return split_multipart(body, content_type, out_dir, max_parts)
    if kind == "application/zip" and not is_zip(body):
        raise ApiProblem(415, "Unsupported media type", "The body was sent as application/zip but is not a zip "
                         "archive (no zip signature); send a zip, or use application/dicom for one DICOM file.")
    target = out_dir / ("upload.zip" if kind == "application/zip" else "upload.dcm")
    body.rename(target)
    return [target]
