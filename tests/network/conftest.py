"""Fixtures for the networking tests: synthetic studies, multipart bodies, free ports and a real Orthanc.

Orthanc 1.10 has no bind-address setting and listens on every interface, so the ``orthanc`` fixture runs only
when the whole test process is in a private network namespace (only ``lo`` in /proc/net/dev), as ``.ci/run``
arranges with ``unshare --net -- sh -c 'ip link set lo up && ...'``; everything started by the tests (Orthanc, our
SCP, uvicorn) then shares that namespace and nothing is reachable from outside. Elsewhere those tests skip.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from dicom_io.network.destinations import DicomWebDestination, DimseDestination
from dicom_io.synthetic import write_ct_series

CANARY_NAME = "CANARY^PHI^NAME"
CANARY_ID = "CANARYPID4711"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_USER, ORTHANC_PASSWORD = "radinfer", "orthanc-test-password-42"
OUR_AE = "RADINFER"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_study(folder: Path, slices: int = 4, *, study_uid: str | None = None) -> list[Path]:
    """A small synthetic CT series (16x16 pixels) whose patient name and id are canaries for PHI-in-logs checks."""
    hu = np.full((slices, 16, 16), -1000.0, dtype=np.float32)
    hu[:, 4:8, 4:8] = 60.0
    return write_ct_series(
        hu, folder, study_uid=study_uid, tags={"PatientName": CANARY_NAME, "PatientID": CANARY_ID}
    )


def multipart_related(files: list[bytes], boundary: str = "radinfer-test-boundary") -> tuple[bytes, str]:
    """A STOW-RS body with one application/dicom part per item, and its Content-Type."""
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n" for f in files)
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    return write_study(tmp_path / "study")


def private_network_namespace() -> bool:
    """True when this process's network namespace has only the loopback interface."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return [line.split(":", 1)[0].strip() for line in lines] == ["lo"]


def _orthanc_skip_reason() -> str | None:
    if shutil.which("Orthanc") is None or not DICOMWEB_PLUGIN.exists():
        return "Orthanc with its DICOMweb plugin is not installed (Debian packages orthanc, orthanc-dicomweb)"
    if not private_network_namespace():
        return (
            "Orthanc 1.10 listens on every interface; run these tests in a private network namespace as root: "
            "unshare --net -- sh -c 'ip link set lo up && .venv/bin/pytest tests/network' (what .ci/run does)"
        )
    return None


@dataclass
class Orthanc:
    """A real Orthanc with a temporary configuration; ``stop()``/``start()`` simulate an outage."""

    root: Path
    http_port: int
    dicom_port: int
    scp_port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> DicomWebDestination:
        return DicomWebDestination(f"{self.url}/dicom-web", ORTHANC_USER, ORTHANC_PASSWORD)

    @property
    def dimse(self) -> DimseDestination:
        return DimseDestination("ORTHANC", "127.0.0.1", self.dicom_port)

    def write_config(self) -> Path:
        config = {
            "Name": "radinfer-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {ORTHANC_USER: ORTHANC_PASSWORD},
            "DicomModalities": {"radinfer": [OUR_AE, "127.0.0.1", self.scp_port]},
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": False,
            "DicomCheckModalityHost": True,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "SaveJobs": False,
            "HttpTimeout": 10,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self) -> None:
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - owned by the process until stop()
        self.process = subprocess.Popen(
            ["Orthanc", "--logfile=" + str(self.root / "orthanc-internal.log"), str(self.write_config())],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.root / 'orthanc.log'}")
            try:
                if httpx.get(f"{self.url}/system", auth=(ORTHANC_USER, ORTHANC_PASSWORD), timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("Orthanc did not answer within 30 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def rest(self, path: str) -> object:
        response = httpx.get(f"{self.url}{path}", auth=(ORTHANC_USER, ORTHANC_PASSWORD), timeout=10)
        response.raise_for_status()
        return response.json()

    def clear(self) -> None:
        for study_id in self.rest("/studies"):
            httpx.delete(f"{self.url}/studies/{study_id}", auth=(ORTHANC_USER, ORTHANC_PASSWORD), timeout=10)


@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    reason = _orthanc_skip_reason()
    if reason:
        pytest.skip(reason)
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), free_port(), free_port(), free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def orthanc(orthanc_server: Orthanc) -> Iterator[Orthanc]:
    """The session's Orthanc, running and empty."""
    if orthanc_server.process is None:
        orthanc_server.start()
    orthanc_server.clear()
    yield orthanc_server
    if orthanc_server.process is None:
        orthanc_server.start()


def dcmtk(*args: str) -> subprocess.CompletedProcess:
    """Run a DCMTK tool (echoscu, storescu, findscu); the caller checks returncode and stderr."""
    return subprocess.run(list(args), check=False, capture_output=True, text=True, timeout=60)
