"""uvicorn's HTTP protocol with a deadline for each request's head (request line and headers).

uvicorn times out an idle keep-alive connection, but not one that opens and then sends its headers a byte at a
time: a few hundred such "slowloris" clients would hold as many connections and file descriptors for ever. The
body has its own idle timeout (``api.upload``); a reverse proxy in front (for TLS) usually adds its own limits.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT_S = 30.0


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """Closes the connection when a request's head is not complete ``HEADER_TIMEOUT_S`` after the connection
    opened or the request's first byte arrived."""

    header_timeout_s = HEADER_TIMEOUT_S
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_head_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()
