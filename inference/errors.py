"""Errors raised by the inference layer.

Exception tree::

    InferenceError                  base
    ├── ModelNotFoundError          a requested model name is unknown (404; suggests the closest name)
    ├── NoModelForStudyError        no bundle's selection rules accept the study (422; says which rule failed)
    ├── BundleError                 a bundle on disk is invalid (bad metadata, hash mismatch, unsafe weights)
    ├── QueueFullError              the work queue is full (503 with Retry-After)
    ├── JobNotFoundError            unknown job id (404)
    ├── JobStateError               operation not valid in the job's state, e.g. result of a running job (409)
    └── RetryableInferenceError     transient failure (e.g. CUDA out of memory); the job may be retried
"""

from __future__ import annotations

import traceback

PROBLEM_TYPE_BASE = "urn:radinfer:problem:"
"""The ``type`` of every RFC 9457 problem radinfer writes, over HTTP and in a job's stored ``error``: a URN,
since there is no page to dereference (RFC 9457 lets consumers match on it, not fetch it)."""


def problem_type(title: str) -> str:
    """``PROBLEM_TYPE_BASE`` + the title as a slug ("Job interrupted" -> ``urn:radinfer:problem:job-interrupted``)."""
    return PROBLEM_TYPE_BASE + "-".join("".join(c if c.isalnum() else " " for c in title.lower()).split())


class InferenceError(Exception):
    """Base class for inference errors."""


class ModelNotFoundError(InferenceError):
    pass


class NoModelForStudyError(InferenceError):
    pass


class BundleError(InferenceError):
    pass


class QueueFullError(InferenceError):
    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class JobNotFoundError(InferenceError):
    pass


class JobStateError(InferenceError):
    pass


class RetryableInferenceError(InferenceError):
    pass


class DeviceOutOfMemoryError(RetryableInferenceError):
    """The device ran out of memory even for the smallest batch: retryable later, or elsewhere (on the CPU)."""


def frame_locations(exc: BaseException) -> str:
    """The traceback of ``exc`` as ``file:line in function`` lines, for logs: never the message or the source
    lines, which may quote dataset values (PHI)."""
    return "\n".join(f"  {f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__))
