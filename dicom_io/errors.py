"""Errors raised while reading DICOM input.

Exception tree::

    DicomIOError                     base of everything raised by dicom_io
    ├── InputRejected                the client's input is unusable (HTTP 4xx at the edge)
    │   ├── NotDicomError            bytes are not a DICOM Part 10 file (or lack file meta)
    │   ├── LimitExceededError       a configured limit was hit (size, count, pixels, nesting) -> 413
    │   ├── UnsafeArchiveError       zip bomb, path traversal, encrypted or malformed zip
    │   ├── UnsupportedInputError    transfer syntax or photometric interpretation with no decoder
    │   ├── DecodeError              pixel data could not be decoded (truncated, corrupt)
    │   └── GeometryError            slices cannot form a consistent volume
    └── (internal failures are not wrapped; they surface as 500 with a request id)

Every message is one sentence: what was wrong (file, tag, keyword, value) and what to do.
"""

from __future__ import annotations


class DicomIOError(Exception):
    """Base class for dicom_io errors."""


class InputRejected(DicomIOError):
    """The input is unusable; the client must change it. ``status`` is the HTTP status to use."""

    status: int = 422
    title: str = "Unprocessable DICOM input"

    def __init__(self, detail: str, *, filename: str | None = None) -> None:
        self.detail = detail
        self.filename = filename
        super().__init__(f"{filename}: {detail}" if filename else detail)


class NotDicomError(InputRejected):
    status = 415
    title = "Not a DICOM file"


class LimitExceededError(InputRejected):
    status = 413
    title = "Input exceeds a configured limit"


class UnsafeArchiveError(InputRejected):
    status = 422
    title = "Unsafe or malformed archive"


class UnsupportedInputError(InputRejected):
    status = 415
    title = "Unsupported DICOM encoding"


class DecodeError(InputRejected):
    status = 422
    title = "Pixel data could not be decoded"


class GeometryError(InputRejected):
    status = 422
    title = "Inconsistent image geometry"
