"""The lung-nodule bundle through the HTTP API, as a PACS gateway would use it: the phantom series uploaded as a
zip, the findings report checked against the same accuracy requirements as the pipeline tests, and the SEG and
SR fetched back as artifacts."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from inference.findings import FindingsReport
from tests.tasks.lung.accuracy import (
    assert_each_nodule_found_within_one_voxel,
    assert_nodules_measured_as_constructed,
)
from tests.tasks.lung.conftest import BUNDLE

ADMIN = "admin-key-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def http_result(tmp_path_factory: pytest.TempPathFactory, write_phantom):
    """(report, {artifact name: bytes}) for the phantom series posted as one zip with ``?wait=``."""
    root = tmp_path_factory.mktemp("http")
    (root / "models").mkdir()
    (root / "models" / BUNDLE.name).symlink_to(BUNDLE)
    settings = Settings(data_dir=root / "server", models_dir=root / "models", bundled_models=False, device="cpu",
                        api_keys=f"admin:{ADMIN}")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in write_phantom("http-upload"):
            zf.write(path, Path(path).name)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/studies?wait=120", content=archive.getvalue(),
                               headers={**HEADERS, "Content-Type": "application/zip"})
        assert response.status_code == 200, response.text
        report = FindingsReport.model_validate(response.json())
        job_id = client.get("/v1/jobs", headers=HEADERS).json()["items"][0]["id"]
        artifacts = {}
        for name in ("seg.dcm", "sr.dcm"):
            body = client.get(f"/v1/jobs/{job_id}/artifacts/{name}", headers=HEADERS)
            assert body.status_code == 200, body.text
            artifacts[name] = body.content
    return report, artifacts


def test_http_report_finds_each_nodule_within_one_voxel(http_result, lung_phantom, nodule_specs):
    report, _ = http_result
    assert report.model.name == "lung_nodule" and report.status == "complete"
    assert_each_nodule_found_within_one_voxel(report, lung_phantom, nodule_specs)


def test_http_report_measures_nodules_as_constructed(http_result, lung_phantom, nodule_specs):
    assert_nodules_measured_as_constructed(http_result[0], lung_phantom, nodule_specs)


def test_http_artifacts_are_the_seg_and_sr_of_the_report(http_result):
    report, artifacts = http_result
    seg, sr = (pydicom.dcmread(io.BytesIO(artifacts[name])) for name in ("seg.dcm", "sr.dcm"))
    assert (seg.Modality, sr.Modality) == ("SEG", "SR")
    assert len(seg.SegmentSequence) == len(report.findings)
    uids = {a.name: a.sop_instance_uid for a in report.artifacts}
    assert (seg.SOPInstanceUID, sr.SOPInstanceUID) == (uids["seg.dcm"], uids["sr.dcm"])
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == report.study_instance_uid
