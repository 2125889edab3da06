"""STOW-RS into the real app: instances are stored, answered with a Store Instances Response, grouped by study
and, after the quiet period, run by the model the bundles' rules pick (here a tiny CT test bundle)."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from dicom_io.synthetic import write_ct_series
from tests.api.conftest import KEYS, ct_hu, write_test_bundle
from tests.network.conftest import multipart_related

HEADERS = {"Authorization": f"Bearer {KEYS['admin']}"}


def test_stow_rs_study_becomes_a_job_after_the_quiet_period(tmp_path: Path) -> None:
    write_test_bundle(tmp_path / "models")
    files = write_ct_series(ct_hu(), tmp_path / "study")
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    settings = Settings(data_dir=tmp_path / "server", models_dir=tmp_path / "models", bundled_models=False,
                        device="cpu", api_keys=f"admin:{KEYS['admin']}", dicom_quiet_period_s=0.5)
    body, content_type = multipart_related([p.read_bytes() for p in files])
    with TestClient(create_app(settings)) as client:
        response = client.post(f"/dicomweb/studies/{study_uid}", content=body,
                               headers={**HEADERS, "Content-Type": content_type, "Accept": "application/dicom+json"})
        assert response.status_code == 200, response.text
        stored = response.json()["00081199"]["Value"]  # ReferencedSOPSequence
        assert len(stored) == len(files)
        deadline = time.monotonic() + 60
        while not (jobs := client.get("/v1/jobs", headers=HEADERS).json()["items"]) or \
                jobs[0]["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, jobs
            time.sleep(0.2)
        (job,) = jobs
        assert (job["state"], job["study_instance_uid"], job["routed_model"]) == ("succeeded", study_uid, "tiny_ct")
        report = client.get(f"/v1/jobs/{job['id']}/result", headers=HEADERS).json()
        assert report["series"][0]["num_instances"] == len(files)
