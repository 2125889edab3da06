"""Fixtures for job store and worker tests: a store on SQLite and, when the binaries exist, PostgreSQL."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inference.jobs.files import JobFiles
from inference.jobs.store import JobStore, metadata, sqlite_url


def _wait_for(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.02) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout} s")


@pytest.fixture
def wait_for() -> Callable[..., object]:
    """Poll until ``predicate`` is truthy and return its value; fail the test after ``timeout`` s."""
    return _wait_for


PID_MAX_LIMIT = 2**22
"""Linux never gives a process a pid above this (the largest kernel.pid_max), so that pid is surely dead; the
pid of a child that has exited could be reused at once on a busy machine."""


@pytest.fixture(scope="session")
def dead_worker() -> str:
    """The id a worker of this host would have had in a process that no longer exists (as after kill -9)."""
    return f"{socket.gethostname()}:{PID_MAX_LIMIT + 1}:deadbeef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _PostgresCluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (run as ``nobody`` when the tests run as root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="radinfer-pg-"))
        self.datadir = self.root / "data"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "nobody")

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "nobody", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60, cwd=self.root)

    def start(self) -> str:
        self._run(
            "initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-o", options, "-l", str(self.root / "log"), "-w", "start"
        )
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (install the Debian package 'postgresql')")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'psycopg[binary]')")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without 'runuser'; PostgreSQL refuses to run as root")
    cluster = _PostgresCluster(bindir)
    try:
        url = cluster.start()
    except subprocess.CalledProcessError as exc:
        cluster.stop()
        pytest.skip(f"could not start a PostgreSQL cluster: {exc.stderr.decode(errors='replace')[-300:]}")
    yield url
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "data")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url: str) -> Iterator[JobStore]:
    job_store = JobStore(store_url)
    yield job_store
    metadata.drop_all(job_store.engine)  # PostgreSQL is shared by the session; start each test empty
    job_store.close()


@pytest.fixture
def files(tmp_path: Path) -> JobFiles:
    return JobFiles(tmp_path / "data")


def _stage_study(files: JobFiles, store: JobStore, *, n_files: int = 2, **create_kwargs: object) -> str:
    staging = files.new_staging_dir()
    for index in range(n_files):
        (staging / f"image{index}.dcm").write_bytes(b"DICM" + bytes([index]) * 16)
    job_id = uuid.uuid4().hex
    files.stage_input(staging, job_id)
    store.create(job_id=job_id, **create_kwargs)
    return job_id


@pytest.fixture
def stage_study() -> Callable[..., str]:
    """Accept a fake study the way the API does: write to staging, move into place, then create the row."""
    return _stage_study
