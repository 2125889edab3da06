"""The STOW-RS router on a minimal FastAPI app: TestClient for the HTTP contract, dicomweb-client over uvicorn."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pydicom
import pytest
import uvicorn
from dicomweb_client.api import DICOMwebClient
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.auth import KeyRing, hash_key
from api.errors import install_error_handlers
from api.routes.dicomweb import create_dicomweb_router, create_pull_router, negotiate
from dicom_io.limits import Limits
from dicom_io.network.dicomweb import DicomWebError, StudyNotFoundError
from dicom_io.network.instances import ReceivedInstance
from dicom_io.network.scu import DimseError
from dicom_io.network.stow import NATIVE_DICOM_NS, StowLimits
from tests.network.conftest import free_port, multipart_related

KEY = "stow-submit-key-0123456789"


class Sink:
    """The injected ``accept``: keeps each instance under ``root/<SOPInstanceUID>.dcm`` like the collector."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.instances: list[ReceivedInstance] = []

    def __call__(self, instance: ReceivedInstance) -> None:
        self.root.mkdir(exist_ok=True)
        shutil.move(instance.path, self.root / f"{instance.sop_instance_uid}.dcm")
        self.instances.append(instance)


def make_app(tmp_path: Path, sink: Sink, stow_limits: StowLimits | None = None) -> FastAPI:
    app = FastAPI()
    app.state.keyring = KeyRing((("submit", hash_key(KEY)),))
    install_error_handlers(app)
    app.include_router(
        create_dicomweb_router(sink, scratch_dir=tmp_path / "scratch", limits=Limits(), stow_limits=stow_limits)
    )
    return app


@pytest.fixture
def sink(tmp_path: Path) -> Sink:
    return Sink(tmp_path / "kept")


@pytest.fixture
def client(tmp_path: Path, sink: Sink) -> TestClient:
    return TestClient(make_app(tmp_path, sink, StowLimits(max_parts=10)), headers={"X-API-Key": KEY})


def test_stow_stores_all_instances_and_answers_200_json(client: TestClient, sink: Sink, study, tmp_path) -> None:
    body, ctype = multipart_related([p.read_bytes() for p in study])
    response = client.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    refs = pydicom.Dataset.from_json(response.json()).ReferencedSOPSequence
    expected = [str(pydicom.dcmread(p).SOPInstanceUID) for p in study]
    assert [r.ReferencedSOPInstanceUID for r in refs] == expected
    assert sorted(p.name for p in sink.root.iterdir()) == sorted(f"{uid}.dcm" for uid in expected)
    assert not any((tmp_path / "scratch").iterdir())  # the request's scratch folder is gone


def test_stow_partial_failure_answers_202_xml_with_failed_sop_and_warning(client: TestClient, sink: Sink, study) -> None:
    parts = [study[0].read_bytes(), study[1].read_bytes()[:-50], study[2].read_bytes()]
    body, ctype = multipart_related(parts)
    response = client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": ctype, "Accept": "application/dicom+xml"}
    )
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/dicom+xml"
    root = ET.fromstring(response.content)
    ns = {"n": NATIVE_DICOM_NS}
    failed = root.findall("n:DicomAttribute[@keyword='FailedSOPSequence']/n:Item", ns)
    stored = root.findall("n:DicomAttribute[@keyword='ReferencedSOPSequence']/n:Item", ns)
    assert len(failed) == 1 and len(stored) == 2
    assert response.headers["warning"].startswith('299 radinfer "part 2:')
    assert len(sink.instances) == 2


def test_stow_into_a_study_refuses_instances_of_another_study(client: TestClient, study) -> None:
    body, ctype = multipart_related([study[0].read_bytes()])
    response = client.post("/dicomweb/studies/1.2.3.4", content=body, headers={"Content-Type": ctype})
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    uid = str(pydicom.dcmread(study[0]).StudyInstanceUID)
    assert client.post(f"/dicomweb/studies/{uid}", content=body, headers={"Content-Type": ctype}).status_code == 200


def test_stow_too_many_parts_is_413_problem(client: TestClient, sink: Sink, study) -> None:
    body, ctype = multipart_related([study[0].read_bytes()] * 11)
    response = client.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype})
    assert response.status_code == 413
    assert "more than 10 parts" in response.json()["detail"]
    assert sink.instances == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"X-API-Key": KEY, "Accept": "image/png"}, 406), ({"X-API-Key": KEY, "Content-Type": "application/zip"}, 415)],
    ids=["no-key", "not-acceptable", "wrong-media-type"],
)
def test_stow_refusals(tmp_path: Path, sink: Sink, study, headers: dict, status: int) -> None:
    body, ctype = multipart_related([study[0].read_bytes()])
    response = TestClient(make_app(tmp_path, sink)).post(
        "/dicomweb/studies", content=body, headers={"Content-Type": ctype, **headers}
    )
    assert response.status_code == status
    assert sink.instances == []


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "application/dicom+json"),
        ("*/*", "application/dicom+json"),
        ("application/dicom+xml", "application/dicom+xml"),
        ("application/dicom+json;q=0.5, application/dicom+xml", "application/dicom+xml"),
        ("application/json", "application/dicom+json"),
    ],
)
def test_negotiate(accept: str | None, chosen: str) -> None:
    assert negotiate(accept) == chosen


@pytest.fixture
def served(tmp_path: Path, sink: Sink) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(tmp_path, sink), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/dicomweb"
    server.should_exit = True
    thread.join(timeout=10)


def test_dicomweb_client_store_instances(served: str, sink: Sink, study) -> None:
    client = DICOMwebClient(url=served, headers={"X-API-Key": KEY})
    datasets = [pydicom.dcmread(p) for p in study]
    response = client.store_instances(datasets=datasets)
    stored = {r.ReferencedSOPInstanceUID for r in response.ReferencedSOPSequence}
    assert stored == {str(ds.SOPInstanceUID) for ds in datasets}
    assert {p.stem for p in sink.root.iterdir()} == stored
    kept = pydicom.dcmread(sink.root / f"{datasets[0].SOPInstanceUID}.dcm")
    assert kept.PixelData == datasets[0].PixelData
    assert json.loads(datasets[0].to_json())["00100010"] == json.loads(kept.to_json())["00100010"]


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        ("a" * 32, 202),
        (None, 202),
        (StudyNotFoundError("WADO-RS: pacs has no study with that StudyInstanceUID", retryable=False), 404),
        (DicomWebError("WADO-RS from pacs failed: ConnectError"), 502),
        (DimseError("association with dimse://PACS@h:104 rejected"), 502),
        (ValueError("no PACS pull source is configured; set RADINFER_PACS_PULL_SOURCE"), 409),
    ],
    ids=["job", "c-move", "unknown-study", "dicomweb-down", "dimse-rejected", "not-configured"],
)
def test_pull_route_maps_outcomes(outcome, status: int) -> None:
    calls: list[str] = []

    def pull(study: str) -> str | None:
        calls.append(study)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    app = FastAPI()
    app.state.keyring = KeyRing((("submit", hash_key(KEY)),))
    install_error_handlers(app)
    app.include_router(create_pull_router(pull))
    client = TestClient(app, headers={"X-API-Key": KEY})
    response = client.post("/v1/pacs/pull/1.2.3.4")
    assert response.status_code == status
    assert calls == ["1.2.3.4"]
    if outcome == "a" * 32:
        assert response.headers["location"] == f"/v1/jobs/{outcome}"
    assert client.post("/v1/pacs/pull/not-a-uid").status_code == 400
    assert TestClient(app).post("/v1/pacs/pull/1.2.3.4").status_code == 401
