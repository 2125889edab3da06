"""Request id, access log, request metrics and the 500 for unexpected errors, as one pure ASGI middleware (no
buffering of bodies)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import unexpected_error
from inference import metrics

log = logging.getLogger("radinfer.access")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_LOGGED_PATH_PARAMS = ("job_id", "evaluation_id", "name")
"""Path parameters the access log names: ours, never a client's identifiers (StudyInstanceUIDs stay out)."""


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
    fields.update({key: str(params[key]) for key in _LOGGED_PATH_PARAMS if key in params})
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
