"""The bone-age bundle through the HTTP API, as a PACS gateway would use it: raw DICOM upload, findings back."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from tests.tasks.bone_age.conftest import BUNDLE, write_phantom

ADMIN = "admin-key-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def client(tmp_path: Path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "bone_age").symlink_to(BUNDLE)
    settings = Settings(data_dir=tmp_path / "server", models_dir=models, bundled_models=False, device="cpu",
                        api_keys=f"admin:{ADMIN}")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_uploaded_radiograph_gets_bone_age_report_sr_and_overlay(client, tmp_path, card_mae_months, photometric):
    path, params = write_phantom(tmp_path / "hand.dcm", seed=9_300_000, sex="F", bone_age_months=96.0,
                                 photometric=photometric, modality="CR")
    response = client.post("/v1/studies?wait=120", content=path.read_bytes(),
                           headers={**HEADERS, "Content-Type": "application/dicom"})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["model"]["name"] == "bone_age" and report["model"]["trained_on_synthetic_data"] is True
    # the shipped export, served by ONNX Runtime through the dynamic batching queue (radinfer.json `batching`)
    assert (report["model"]["runner"], report["model"]["device"]) == ("onnx+batching", "cpu")
    assert report["status"] == "complete", report["reasons"]
    assert abs(report["summary"]["bone_age_months"] - params.bone_age_months) <= 2 * card_mae_months + 6
    job_id = client.get("/v1/jobs", headers=HEADERS).json()["items"][0]["id"]
    dicom = {a["name"]: a for a in report["artifacts"] if a["media_type"] == "application/dicom"}
    assert len(dicom) >= 2, report["artifacts"]
    modalities = set()
    for name, artifact in dicom.items():
        body = client.get(f"/v1/jobs/{job_id}/artifacts/{name}", headers=HEADERS)
        assert body.status_code == 200
        ds = pydicom.dcmread(io.BytesIO(body.content))
        assert ds.SOPInstanceUID == artifact["sop_instance_uid"] and ds.PatientSex == "F"
        modalities.add(ds.Modality)
    assert "SR" in modalities
    png = [a for a in report["artifacts"] if a["media_type"] == "image/png"]
    assert png
    image = client.get(f"/v1/jobs/{job_id}/artifacts/{png[0]['name']}", headers=HEADERS).content
    assert image.startswith(b"\x89PNG") and len(image) > 1000
