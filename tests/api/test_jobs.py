"""Jobs: listing and filters, status, result before completion, artifacts, cancel and delete."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from dicom_io.synthetic import write_ct_series
from tests.api.conftest import auth, multipart, wait_finished, wait_ready, write_test_bundle
from tests.api.test_errors import assert_problem


def submit(client: TestClient, paths: list) -> str:
    response = client.post("/v1/studies", files=multipart(paths), headers=auth("submit"))
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def test_list_paginates_and_filters(client: TestClient, ct_study: Callable) -> None:
    ids = [submit(client, ct_study()) for _ in range(3)]
    for job_id in ids:
        assert wait_finished(client, job_id)["state"] == "succeeded"
    page = client.get("/v1/jobs?limit=2&offset=0", headers=auth("read")).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    rest = client.get("/v1/jobs?limit=2&offset=2", headers=auth("read")).json()
    assert {j["id"] for j in page["items"] + rest["items"]} == set(ids)
    assert client.get("/v1/jobs?state=failed", headers=auth("read")).json()["total"] == 0
    assert client.get("/v1/jobs?model=tiny_ct", headers=auth("read")).json()["total"] == 3
    study = page["items"][0]["study_instance_uid"]
    assert client.get(f"/v1/jobs?study={study}", headers=auth("read")).json()["total"] == 1
    assert_problem(client.get("/v1/jobs?state=exploded", headers=auth("read")), 422)


def test_queued_job_result_is_409_then_cancel_and_delete(client: TestClient, ct_study: Callable) -> None:
    services = client.app.state.services
    services.worker.stop()
    job_id = submit(client, ct_study())
    body = assert_problem(client.get(f"/v1/jobs/{job_id}/result", headers=auth("read")), 409)
    assert "queued" in body["detail"]
    cancelled = client.delete(f"/v1/jobs/{job_id}", headers=auth("admin"))
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert_problem(client.get(f"/v1/jobs/{job_id}/result", headers=auth("read")), 409)
    assert services.files.job_dir(job_id).exists()
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth("admin")).status_code == 204
    assert not services.files.job_dir(job_id).exists()
    assert_problem(client.get(f"/v1/jobs/{job_id}", headers=auth("read")), 404)


def test_finished_job_delete_removes_record_and_files(client: TestClient, ct_study: Callable) -> None:
    job_id = submit(client, ct_study())
    assert wait_finished(client, job_id)["state"] == "succeeded"
    result_path = client.app.state.services.files.result_path(job_id)
    assert result_path.is_file()
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth("admin")).status_code == 204
    assert not result_path.exists()
    assert_problem(client.get(f"/v1/jobs/{job_id}/result", headers=auth("read")), 404)


def test_artifact_names_are_validated(client: TestClient, ct_study: Callable) -> None:
    job_id = submit(client, ct_study())
    assert wait_finished(client, job_id)["state"] == "succeeded"
    assert_problem(client.get(f"/v1/jobs/{job_id}/artifacts/result.jsonx", headers=auth("read")), 404)
    assert_problem(client.get(f"/v1/jobs/{job_id}/artifacts/.hidden", headers=auth("read")), 422)
    assert_problem(client.get(f"/v1/jobs/{job_id}/artifacts/..%2Fresult.json", headers=auth("read")), 404)


def test_running_job_delete_requests_cancel_and_the_job_stops(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    write_test_bundle(tmp_path / "slow", "slow_ct", overlap=0.5)
    hu = np.full((24, 48, 48), -800.0, dtype=np.float32)
    with TestClient(create_app(make_settings(models_dir=tmp_path / "slow"))) as client:
        wait_ready(client)
        job_id = submit(client, write_ct_series(hu, tmp_path / "study"))
        deadline = time.monotonic() + 120
        while (job := client.get(f"/v1/jobs/{job_id}", headers=auth("read")).json())["state"] != "running":
            assert time.monotonic() < deadline and job["state"] == "queued", job
            time.sleep(0.02)
        response = client.delete(f"/v1/jobs/{job_id}", headers=auth("admin"))
        assert response.status_code == 202 and response.json()["cancel_requested"] is True
        assert wait_finished(client, job_id)["state"] == "cancelled"
        assert_problem(client.get(f"/v1/jobs/{job_id}/result", headers=auth("read")), 409)
        assert not client.app.state.services.files.has_output(job_id)


def test_redelivery_needs_admin_and_configured_destinations(client: TestClient, ct_study: Callable) -> None:
    job_id = client.post("/v1/studies", files=multipart(ct_study()), headers=auth("submit")).json()["job_id"]
    assert wait_finished(client, job_id)["state"] == "succeeded"
    assert_problem(client.post(f"/v1/jobs/{job_id}/delivery", headers=auth("read")), 403)
    assert_problem(client.post(f"/v1/jobs/{'b' * 32}/delivery", headers=auth("admin")), 404)
    body = assert_problem(client.post(f"/v1/jobs/{job_id}/delivery", headers=auth("admin")), 409)
    assert "RADINFER_DESTINATIONS" in body["detail"]
