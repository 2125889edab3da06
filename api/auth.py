"""API keys, roles and rights.

Keys come from ``RADINFER_API_KEYS`` (``role:key`` pairs, hashed on load) and ``RADINFER_API_KEYS_FILE`` (lines
``role:sha256hex``, ``#`` comments allowed). Only SHA-256 hashes are kept in memory and compared with
``hmac.compare_digest`` against every known hash. A client sends ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.

Roles and their rights (choice documented in the README):

- ``submit``: submit studies, and read the job, result and artifacts *by id* so it can poll what it submitted
  (job ids are random 128-bit values); it cannot list jobs, delete or read metrics.
- ``read``: everything ``submit`` may read, plus listing jobs and reading models.
- ``admin``: every right, including submitting, cancelling/deleting jobs and ``/metrics``.

With no key configured the server refuses a non-loopback host; on loopback it creates one admin key, prints it
once to stderr (never to the log) and keeps only its hash in ``<data_dir>/api_keys`` (mode 0600) for later starts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, TextIO

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.config import ROLES, ConfigError, Settings, parse_key_pairs
from api.errors import ApiProblem

log = logging.getLogger(__name__)

GENERATED_KEYS_FILE = "api_keys"
_HEX64 = set("0123456789abcdef")


class Right(str, Enum):
    submit = "submit"
    read_job = "read_job"
    list_jobs = "list_jobs"
    read_models = "read_models"
    delete_job = "delete_job"
    metrics = "metrics"


ROLE_RIGHTS: dict[str, frozenset[Right]] = {
    "submit": frozenset({Right.submit, Right.read_job, Right.read_models}),
    "read": frozenset({Right.read_job, Right.list_jobs, Right.read_models}),
    "admin": frozenset(Right),
}


@dataclass(frozen=True)
class Principal:
    """The caller: its role and a short, non-secret key id (first 8 hex digits of the key's hash) for logs."""

    role: str
    key_id: str

    def can(self, right: Right) -> bool:
        return right in ROLE_RIGHTS[self.role]


@dataclass(frozen=True)
class KeyRing:
    """Known (role, sha256 hex) pairs."""

    entries: tuple[tuple[str, str], ...]

    def identify(self, key: str) -> Principal | None:
        digest = hash_key(key)
        found: Principal | None = None
        for role, known in self.entries:  # no early exit: every comparison is made
            if hmac.compare_digest(digest, known) and found is None:
                found = Principal(role=role, key_id=known[:8])
        return found


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_keys_file(path: Path) -> list[tuple[str, str]]:
    """Parse ``role:sha256hex`` lines; the error names the file and line number, never the value."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        role, _, digest = (part.strip() for part in text.partition(":"))
        digest = digest.lower()
        if role.lower() not in ROLES or len(digest) != 64 or not set(digest) <= _HEX64:
            raise ConfigError(
                f"RADINFER_API_KEYS_FILE {path} line {number}: expected role:sha256hex with a role in "
                f"{', '.join(ROLES)} and 64 hex digits (make one with: printf %s KEY | sha256sum | cut -d' ' -f1)"
            )
        entries.append((role.lower(), digest))
    return entries


def load_keyring(settings: Settings, *, announce: TextIO | None = None) -> KeyRing:
    """Build the key ring from the settings, creating a first admin key on loopback when none is configured.

    The generated key is written to ``announce`` (default: stderr), never to the log.
    """
    entries = [(role, hash_key(key)) for role, key in parse_key_pairs(settings.api_keys or "")]
    if settings.api_keys_file is not None:
        entries += read_keys_file(settings.api_keys_file)
    generated = settings.data_dir / GENERATED_KEYS_FILE
    if entries:
        if generated.exists() and (settings.api_keys_file is None
                                   or settings.api_keys_file.resolve() != generated.resolve()):
            log.warning("API keys come from RADINFER_API_KEYS / RADINFER_API_KEYS_FILE; the key generated at first "
                        "start (%s) is not accepted; add it with RADINFER_API_KEYS_FILE=%s", generated, generated)
        return KeyRing(tuple(entries))
    if not settings.is_loopback:
        raise ConfigError(
            f"RADINFER_HOST={settings.host} is not a loopback address and no API key is configured; "
            "set RADINFER_API_KEYS or RADINFER_API_KEYS_FILE before exposing the server"
        )
    if not generated.exists():
        key = secrets.token_urlsafe(32)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(generated, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f"# generated admin key for a loopback-only server; only its SHA-256 is stored\nadmin:{hash_key(key)}\n")
        print(
            f"radinfer: no API key configured; created an admin key for this loopback server.\n"
            f"radinfer: API key (shown once, only its hash is kept in {generated}): {key}",
            file=announce or sys.stderr,
            flush=True,
        )
    return KeyRing(tuple(read_keys_file(generated)))


# Declared so that the OpenAPI document lists both ways to send a key: generated clients and Swagger UI's
# "Authorize" then send it. auto_error=False leaves the 401 (as problem+json) to ``authenticate``.
_BEARER = HTTPBearer(auto_error=False, description="An API key as `Authorization: Bearer KEY`")
_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key as `X-API-Key: KEY`")


def _unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(
        401, "Authentication required", detail, headers={"WWW-Authenticate": 'Bearer realm="radinfer"'}
    )


def authenticate(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
    header_key: Annotated[str | None, Security(_KEY_HEADER)],
) -> Principal:
    """A dependency that resolves the caller from its key, or raises 401."""
    key = bearer.credentials if bearer is not None else header_key
    if not key:
        raise _unauthorized("Send an API key as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'.")
    principal = request.app.state.keyring.identify(key)
    if principal is None:
        raise _unauthorized("The API key is not valid; check RADINFER_API_KEYS or ask an administrator.")
    request.state.principal = principal
    return principal


def require(right: Right):
    """A dependency that authenticates the caller and checks one right (403 if its role lacks it)."""

    def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.can(right):
            raise ApiProblem(
                403, "Forbidden", f"The {principal.role!r} role may not {right.value.replace('_', ' ')}; use a key "
                f"whose role allows it."
            )
        return principal

    dependency.__name__ = f"require_{right.value}"
    return dependency
