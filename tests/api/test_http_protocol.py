"""The request-head deadline: a slowloris client is cut off, a normal one is served, keep-alive still works."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from api.http_protocol import HeaderTimeoutProtocol

DEADLINE_S = 0.6


class _QuickDeadline(HeaderTimeoutProtocol):
    header_timeout_s = DEADLINE_S


async def _hello(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture()
def port() -> Iterator[int]:
    config = uvicorn.Config(_hello, host="127.0.0.1", port=0, http=_QuickDeadline, log_config=None,
                            timeout_keep_alive=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(10)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False


def _request(sock: socket.socket) -> bytes:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    return sock.recv(1024)


def test_headers_that_never_finish_are_cut_off(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # no blank line: the head never ends
        started = time.monotonic()
        assert _closed_within(sock, 10)
        assert DEADLINE_S * 0.8 < time.monotonic() - started < DEADLINE_S + 3


def test_a_silent_new_connection_is_cut_off(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert _closed_within(sock, 10)


def test_trickled_headers_do_not_reset_the_deadline(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        while time.monotonic() - started < DEADLINE_S * 4:
            try:
                sock.sendall(b"X-A: b\r\n")
            except OSError:
                break
            time.sleep(DEADLINE_S / 6)
        assert _closed_within(sock, 5)
        assert time.monotonic() - started < DEADLINE_S * 4


def test_prompt_requests_on_one_keep_alive_connection_are_served(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert _request(sock).startswith(b"HTTP/1.1 200")
        time.sleep(DEADLINE_S * 1.5)  # idle between requests is the keep-alive timeout's business (30 s here)
        assert _request(sock).startswith(b"HTTP/1.1 200")
