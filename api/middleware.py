"""Request id, access log, request metrics and the 500 for unexpected errors, as one pure ASGI middleware (no
buffering of bodies)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem_response, unexpected_error
from inference import metrics

log = logging.getLogger("radinfer.access")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_LOGGED_PATH_PARAMS = {"job_id": "job_id", "evaluation_id": "evaluation_id", "name": "artifact"}
"""Path parameters the access log names, and their fields: ours, never a client's identifiers (StudyInstanceUIDs
stay out). ``name`` would clash with the log record's own attribute."""


def _audit_fields(scope: Scope) -> dict[str, str]:
    """Who asked for what: the client's address, the key's role and id (set by authentication), and our ids."""
    fields: dict[str, str] = {}
    client = scope.get("client")
    if client:
        fields["client"] = str(client[0])
    principal = scope.get("state", {}).get("principal")
    if principal is not None:
        fields["role"], fields["key_id"] = principal.role, principal.key_id
    params = scope.get("path_params") or {}
    fields.update({field: str(params[key]) for key, field in _LOGGED_PATH_PARAMS.items() if key in params})
    return fields


class RequestContextMiddleware:
    """Gives every request an id (the client's X-Request-ID when well formed), echoes it, logs and counts.

    The access log line is the audit trail: method, route template, status, time, client address, the caller's
    role and key id, and the job or evaluation it touched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _CLIENT_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status: int | None = None  # set when the response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # noqa: BLE001 -- the last stop: a problem+json 500, the server stays quiet
            response = unexpected_error(Request(scope), exc)
            if status is None:
                await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            status = status or 500  # no response at all: the client saw the connection fail
            metrics.HTTP_REQUESTS.labels(method=scope["method"], route=route, status=str(status)).inc()
            metrics.HTTP_DURATION.labels(route=route).observe(elapsed)
            log.info(
                "%s %s %d %.1f ms",
                scope["method"],
                route,
                status,
                elapsed * 1000,
                extra={"request_id": request_id, **_audit_fields(scope)},
            )


class BodyLimitMiddleware:
    """413 for a request body over its limit, before any route reads it.

    Study uploads (``upload_paths``) may send up to ``RADINFER_MAX_UPLOAD_BYTES``; their routes stream the body to
    disk and count it themselves, so only a declared Content-Length is checked here. Every other route takes a
    small JSON body, which FastAPI reads into memory: at most ``json_limit`` bytes (and never more than the upload
    limit), counted as it arrives, so a chunked body cannot slip past.
    """

    def __init__(self, app: ASGIApp, upload_limit: int, upload_paths: tuple[str, ...],
                 json_limit: int = 1 << 20) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.upload_paths = upload_paths
        self.json_limit = min(json_limit, upload_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"].startswith(self.upload_paths)
        limit = self.upload_limit if upload else self.json_limit
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, limit)
            return
        if upload:
            await self.app(scope, receive, send)
            return
        received = 0
        refused = False

        async def counted() -> Message:
            """The body as it arrives; past the limit, the 413 goes out and the route sees a disconnect."""
            nonlocal received, refused
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit and not refused:
                refused = True
                await self._too_large(scope, receive, send, limit)
            return {"type": "http.disconnect"} if refused else message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not refused:  # the route's own reaction to the disconnect is moot: the client has its 413
                raise

    @staticmethod
    async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem_response(
            Request(scope), 413, "Request body too large",
            f"This route accepts a body of at most {limit} bytes (RADINFER_MAX_UPLOAD_BYTES applies to study "
            "uploads); send a smaller request.", headers={"Connection": "close"},
        )
        await response(scope, receive, send)
