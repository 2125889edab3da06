"""DICOMweb client side (httpx): STOW-RS push and WADO-RS retrieval of a whole study.

Retrieval streams the ``multipart/related`` answer through the same bounded parser as our STOW-RS endpoint.
Credentials travel as HTTP basic auth and never appear in messages (destinations print without passwords).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom.filereader

from dicom_io.network.destinations import DicomWebDestination
from dicom_io.network.stow import DICOM, DICOM_JSON, MultipartRelatedParser, StowLimits

_READ_BYTES = 1024 * 1024


class DicomWebError(ConnectionError):
    """A DICOMweb request failed; ``retryable`` is False for answers that a retry cannot change (4xx but 408/429)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class StudyNotFoundError(DicomWebError, LookupError):
    """The server has no study with the requested StudyInstanceUID."""


@dataclass
class StowResult:
    """SOP Instance UIDs the origin server stored, and those it refused with their failure reason."""

    stored: set[str] = field(default_factory=set)
    failed: dict[str, int] = field(default_factory=dict)


def _client(dest: DicomWebDestination, timeout_s: float) -> httpx.Client:
    return httpx.Client(auth=dest.auth, timeout=timeout_s, follow_redirects=False)


def _check(response: httpx.Response, dest: DicomWebDestination, what: str) -> None:
    code = response.status_code
    if code < 400:
        return
    hint = " (check the user and password of the destination)" if code in (401, 403) else ""
    retryable = code >= 500 or code in (408, 429)
    raise DicomWebError(f"{what} to {dest.name} answered HTTP {code}{hint}", retryable=retryable)


def stow_instances(dest: DicomWebDestination, paths: Iterable[Path], *, timeout_s: float = 60.0) -> StowResult:
    """POST the files to ``<base>/studies`` in one multipart/related request and read the response."""
    boundary = secrets.token_hex(16)
    chunks: list[bytes] = []
    sent: list[str] = []
    for path in paths:
        sent.append(str(pydicom.filereader.read_file_meta_info(path).MediaStorageSOPInstanceUID))
        chunks += [f"--{boundary}\r\nContent-Type: {DICOM}\r\n\r\n".encode(), Path(path).read_bytes(), b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    headers = {
        "Content-Type": f'multipart/related; type="{DICOM}"; boundary={boundary}',
        "Accept": DICOM_JSON,
    }
    try:
        with _client(dest, timeout_s) as client:
            response = client.post(f"{dest.base_url}/studies", content=b"".join(chunks), headers=headers)
    except httpx.HTTPError as exc:
        raise DicomWebError(f"STOW-RS to {dest.name} failed: {type(exc).__name__}") from None
    if response.status_code != 409:
        _check(response, dest, "STOW-RS")
    result = StowResult()
    try:
        body = json.loads(response.content) if response.content else {}
    except ValueError:
        raise DicomWebError(f"STOW-RS to {dest.name}: the response is not DICOM JSON") from None
    for item in body.get("00081198", {}).get("Value", []):
        uid = item.get("00081155", {}).get("Value", [""])[0]
        result.failed[uid] = int(item.get("00081197", {}).get("Value", [0x0110])[0])
    for item in body.get("00081199", {}).get("Value", []):
        result.stored.add(item.get("00081155", {}).get("Value", [""])[0])
    if response.status_code == 200 and not body:
        result.stored.update(sent)  # some servers answer 200 with an empty body
    return result


def retrieve_study(
    source: DicomWebDestination, study_uid: str, dest_dir: Path, *, limits: StowLimits | None = None,
    timeout_s: float = 120.0,
) -> list[Path]:
    """WADO-RS ``GET <base>/studies/{uid}`` (any transfer syntax) into ``dest_dir``; the part files written."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    headers = {"Accept": f'multipart/related; type="{DICOM}"; transfer-syntax=*'}
    try:
        with _client(source, timeout_s) as client, client.stream(
            "GET", f"{source.base_url}/studies/{study_uid}", headers=headers
        ) as response:
            if response.status_code == 404:
                raise StudyNotFoundError(f"WADO-RS: {source.name} has no study with that StudyInstanceUID", retryable=False)
            _check(response, source, "WADO-RS")
            parser = MultipartRelatedParser(response.headers.get("content-type", ""), dest_dir, limits or StowLimits())
            for chunk in response.iter_bytes(_READ_BYTES):
                parser.feed(chunk)
            return parser.close()
    except httpx.HTTPError as exc:
        raise DicomWebError(f"WADO-RS from {source.name} failed: {type(exc).__name__}") from None
