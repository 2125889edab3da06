"""Service failures found in a fresh-eyes pass: paging past the store's integers, the queue limit under concurrent
submissions (SQLite and PostgreSQL), and request bodies that stall or stop half-way (on a real uvicorn server)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import upload
from api.config import Settings
from api.main import create_app
from inference.errors import QueueFullError
from inference.jobs.store import JobState, JobStore, metadata, sqlite_url
from tests.api.conftest import auth, multipart, wait_ready
from tests.api.test_errors import assert_problem
from tests.jobs.conftest import postgres_url  # noqa: F401 -- fixture: a throwaway PostgreSQL cluster


def test_offset_beyond_64_bits_is_422_not_500(client: TestClient) -> None:
    for offset in (2**63, 10**20):
        assert_problem(client.get(f"/v1/jobs?offset={offset}", headers=auth("read")), 422)
    assert client.get("/v1/jobs?offset=1000000", headers=auth("read")).json()["items"] == []


def test_concurrent_submissions_never_queue_more_than_the_limit(
    make_settings: Callable[..., Settings], ct_study: Callable
) -> None:
    """Every submission passes the early capacity check before any is stored: only the atomic insert can hold."""
    submissions, limit = 5, 2
    studies = [ct_study() for _ in range(submissions)]
    with TestClient(create_app(make_settings(max_queued_jobs=limit))) as client:
        wait_ready(client)
        services = client.app.state.services
        services.worker.stop()  # keep every accepted job queued
        checked = threading.Barrier(submissions, timeout=20)
        stage_input = services.files.stage_input

        def stage_after_every_check(staging: Path, job_id: str) -> Path:
            checked.wait()  # all submissions have counted the queue (0 < limit) before any inserts
            return stage_input(staging, job_id)

        services.files.stage_input = stage_after_every_check
        with ThreadPoolExecutor(submissions) as pool:
            responses = list(pool.map(
                lambda paths: client.post("/v1/studies", files=multipart(paths), headers=auth("submit")), studies
            ))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [202] * limit + [503] * (submissions - limit), [r.text for r in responses]
        for refused in (r for r in responses if r.status_code == 503):
            assert_problem(refused, 503)
            assert int(refused.headers["retry-after"]) > 0
        assert services.store.count(JobState.queued) == limit
        assert len(services.files.job_ids()) == limit  # refused submissions leave no job folder behind


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    url = sqlite_url(tmp_path) if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    job_store = JobStore(url)
    yield job_store
    metadata.drop_all(job_store.engine)
    job_store.close()


def test_store_create_enforces_max_queued_atomically(store: JobStore) -> None:
    threads, limit = 12, 3
    start = threading.Barrier(threads, timeout=20)

    def create(_: int) -> bool:
        start.wait()
        try:
            store.create(max_queued=limit)
        except QueueFullError as exc:
            assert exc.retry_after_s > 0
            return False
        return True

    with ThreadPoolExecutor(threads) as pool:
        accepted = sum(pool.map(create, range(threads)))
    assert accepted == limit
    assert store.count(JobState.queued) == limit
    store.create()  # without max_queued (evaluation cases) nothing is checked


# --- request bodies on a real server ----------------------------------------------------------------------


@pytest.fixture
def served(make_settings: Callable[..., Settings]) -> Iterator[tuple[FastAPI, int]]:
    """The app on a real uvicorn server (the TestClient cannot stall or drop a body half-way)."""
    app = create_app(make_settings())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield app, sock.getsockname()[1]
    server.should_exit = True
    thread.join(30)
    sock.close()


def _partial_upload(port: int, declared: int, sent: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /v1/studies HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {auth('submit')['Authorization'][7:]}\r\n"
        f"Content-Type: application/dicom\r\nContent-Length: {declared}\r\n\r\n"
    )
    conn.sendall(head.encode() + b"\0" * sent)
    return conn


def _read_until_closed(conn: socket.socket, timeout: float) -> bytes:
    conn.settimeout(timeout)
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def _wait_staging_empty(app: FastAPI, timeout: float = 10) -> None:
    staging = app.state.services.files.staging_dir
    deadline = time.monotonic() + timeout
    while any(staging.iterdir()):
        assert time.monotonic() < deadline, list(staging.iterdir())
        time.sleep(0.05)


def test_stalled_body_gets_408_and_the_connection_closes(
    served: tuple[FastAPI, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, port = served
    monkeypatch.setattr(upload, "BODY_IDLE_TIMEOUT_S", 1.0, raising=False)
    started = time.monotonic()
    with _partial_upload(port, declared=100_000, sent=1000) as conn:
        answer = _read_until_closed(conn, timeout=10)  # socket.timeout here: the server waits for ever
    assert time.monotonic() - started < 8
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"content-type: application/problem+json" in head.lower()
    assert b'"status":408' in body
    _wait_staging_empty(app)


def test_client_gone_mid_body_is_a_client_error_not_an_unhandled_500(
    served: tuple[FastAPI, int], caplog: pytest.LogCaptureFixture
) -> None:
    app, port = served
    caplog.set_level(logging.INFO)
    _partial_upload(port, declared=100_000, sent=1000).close()
    deadline = time.monotonic() + 10
    while not any(r.name == "radinfer.access" and "POST /v1/studies" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "no access log line for the dropped upload"
        time.sleep(0.05)
    access = next(r.getMessage() for r in caplog.records if r.name == "radinfer.access")
    assert " 400 " in access, access
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    _wait_staging_empty(app)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_study_uid_longer_than_dicom_allows_is_422_on_every_store(
    backend: str, request: pytest.FixtureRequest, make_settings: Callable[..., Settings], ct_study: Callable
) -> None:
    """PostgreSQL's varchar(64) refused the insert: an unhandled 500 after the study had been staged."""
    overrides = {"database_url": request.getfixturevalue("postgres_url")} if backend == "postgres" else {}
    long_uid = "1.2." + "3" * 91
    app = create_app(make_settings(**overrides))
    try:
        with TestClient(app) as client:
            response = client.post(
                "/v1/studies", files=multipart(ct_study(study_uid=long_uid)), headers=auth("submit")
            )
            assert "StudyInstanceUID" in assert_problem(response, 422)["detail"]
            assert app.state.services.files.job_ids() == []
            ok = client.post("/v1/studies", files=multipart(ct_study()), headers=auth("submit"))
            assert ok.status_code == 202, ok.text
    finally:
        metadata.drop_all(app.state.services.store.engine)  # PostgreSQL is shared by the session
