"""The hospital's view, end to end: DCMTK ``storescu`` sends a chest CT to our SCP, the bundled lung-nodule model
runs, and its SEG, SR and key images arrive in a real Orthanc, in new series of the study the PACS already holds,
where QIDO-RS and ``findscu`` find them (once each) and ``dciodvfy`` accepts them. Runs where Orthanc runs (a private network namespace)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from fastapi.testclient import TestClient

from api.config import BUNDLED_MODELS_DIR, Settings
from api.main import create_app
from dicom_io import validate
from dicom_io.synthetic import write_ct_series
from tests.network.conftest import ORTHANC_PASSWORD, ORTHANC_USER, Orthanc, dcmtk, free_port

ADMIN = "admin-key-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
LUNG_BUNDLE = BUNDLED_MODELS_DIR / "lung_nodule"


def _phantom_module():
    spec = importlib.util.spec_from_file_location("lung_phantom", LUNG_BUNDLE / "scripts" / "phantom.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _poll(fetch, done, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s} s; last: {value}"
        time.sleep(0.5)


@pytest.mark.skipif(not (LUNG_BUNDLE / "models" / "model.pt").exists(), reason="the lung_nodule bundle has no weights")
def test_storescu_study_comes_back_to_orthanc_as_seg_sr_and_key_images(orthanc: Orthanc, tmp_path: Path) -> None:
    phantom = _phantom_module().generate_phantom(
        seed=7, shape=(64, 160, 160), spacing=(1.5, 0.8, 0.8), noise_sd=15.0,
        nodules=[{"center_xyz": (-30.0, 0.0, 0.0), "diameter_mm": 14.0, "type": "solid"}],
    )
    files = write_ct_series(phantom.hu, tmp_path / "study", spacing=phantom.spacing, origin=phantom.origin)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    # The modality sends the study to the PACS (Orthanc) and to us; our results must join it there.
    archived = dcmtk("storescu", "-aet", "RADINFER", "-aec", "ORTHANC", "127.0.0.1", str(orthanc.dicom_port),
                     *map(str, files))
    assert archived.returncode == 0, archived.stderr
    scp_port = free_port()
    settings = Settings(
        data_dir=tmp_path / "server",
        device="cpu",
        api_keys=f"admin:{ADMIN}",
        dicom_port=scp_port,
        dicom_host="127.0.0.1",
        dicom_allowed_ae_titles="STORESCU",
        dicom_quiet_period_s=1.0,
        destinations=f"dicomweb+http://{ORTHANC_USER}:{ORTHANC_PASSWORD}@127.0.0.1:{orthanc.http_port}/dicom-web",
    )
    with TestClient(create_app(settings)) as client:
        _poll(lambda: client.get("/readyz").status_code, lambda code: code == 200, 180, "readiness")
        sent = dcmtk("storescu", "-aet", "STORESCU", "-aec", "RADINFER", "127.0.0.1", str(scp_port),
                     *map(str, files))
        assert sent.returncode == 0, sent.stderr
        jobs = _poll(lambda: client.get("/v1/jobs", headers=HEADERS).json()["items"],
                     lambda items: items and items[0]["state"] in ("succeeded", "failed"), 300, "a finished job")
        (job,) = jobs
        assert job["state"] == "succeeded", job["error"]
        report = client.get(f"/v1/jobs/{job['id']}/result", headers=HEADERS).json()
        assert report["study_instance_uid"] == study_uid and report["findings"], report["reasons"]
        delivered = _poll(lambda: client.get(f"/v1/jobs/{job['id']}", headers=HEADERS).json()["delivery"] or {},
                          lambda status: status and all(s["state"] == "delivered" for s in status.values()),
                          120, "delivery")
        assert len(delivered) == 1

    auth = (ORTHANC_USER, ORTHANC_PASSWORD)
    series = httpx.get(f"{orthanc.url}/dicom-web/studies/{study_uid}/series", auth=auth, timeout=10).json()
    modalities = {s["00080060"]["Value"][0] for s in series}
    assert {"CT", "SEG", "SR", "OT"} <= modalities, modalities  # OT: key images (Secondary Capture)
    dicom_artifacts = [a for a in report["artifacts"] if a["media_type"] == "application/dicom"]

    found = dcmtk("findscu", "-S", "-aet", "RADINFER", "-aec", "ORTHANC", "-k", "QueryRetrieveLevel=SERIES",
                  "-k", f"StudyInstanceUID={study_uid}", "-k", "Modality", "127.0.0.1", str(orthanc.dicom_port))
    assert found.returncode == 0, found.stderr
    assert "SEG" in found.stderr and "SR" in found.stderr

    for artifact in dicom_artifacts:
        uid = artifact["sop_instance_uid"]
        (match,) = httpx.post(f"{orthanc.url}/tools/lookup", content=uid, auth=auth, timeout=10).json()  # exactly one copy
        data = httpx.get(f"{orthanc.url}/instances/{match['ID']}/file", auth=auth, timeout=30).content
        stored = tmp_path / f"from-orthanc-{artifact['name']}"
        stored.write_bytes(data)
        if validate.available():
            assert validate.dciodvfy(stored).errors == [], artifact["name"]
