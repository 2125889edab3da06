"""Submitting studies over HTTP: the three body formats, routing, ?wait, results, artifacts, backpressure."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from tests.api.conftest import auth, multipart, wait_finished, wait_ready
from tests.api.test_errors import assert_problem


def zip_bytes(paths: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in paths:
            archive.write(path, f"series/{path.name}")
    return buffer.getvalue()


def test_multipart_study_runs_to_a_findings_report(client: TestClient, ct_study: Callable) -> None:
    paths = ct_study()
    response = client.post("/v1/studies", files=multipart(paths), headers=auth("submit"))
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    job = wait_finished(client, job_id, role="submit")
    assert job["state"] == "succeeded", job
    assert job["routed_model"] == "tiny_ct" and job["progress"] == 1.0
    assert {"read_headers", "inference"} <= set(job["timings"])
    report = client.get(f"/v1/jobs/{job_id}/result", headers=auth("submit")).json()
    assert report["model"]["name"] == "tiny_ct" and report["model"]["trained_on_synthetic_data"] is True
    assert report["series"][0]["num_instances"] == len(paths)
    assert report["artifacts"], report
    for artifact in report["artifacts"]:
        download = client.get(f"/v1/jobs/{job_id}/artifacts/{artifact['name']}", headers=auth("read"))
        assert download.status_code == 200 and len(download.content) == artifact["size_bytes"]
        assert download.headers["content-type"].split(";")[0] == artifact["media_type"]  # as the report says
    unlisted = client.get(f"/v1/jobs/{job_id}/artifacts/result.json", headers=auth("read"))
    assert unlisted.status_code == 404  # the report itself is at /result, not an artifact


def test_zip_body_with_wait_answers_200_with_the_report(client: TestClient, ct_study: Callable) -> None:
    body = zip_bytes(ct_study())
    response = client.post(
        "/v1/studies?wait=60", content=body, headers={**auth("submit"), "Content-Type": "application/zip"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] in ("complete", "partial")
    assert response.headers["location"] == f"/v1/jobs/{response.json()['job_id']}"  # the id is in the body too


def test_zip_part_in_multipart_is_unpacked(client: TestClient, ct_study: Callable) -> None:
    files = [("file", ("study.zip", zip_bytes(ct_study()), "application/zip"))]
    response = client.post("/v1/studies?wait=60", files=files, headers=auth("submit"))
    assert response.status_code == 200, response.text


def test_single_dicom_body_is_accepted_then_rejected_by_routing(client: TestClient, ct_study: Callable) -> None:
    one = ct_study()[0].read_bytes()
    response = client.post("/v1/studies", content=one, headers={**auth("submit"), "Content-Type": "application/dicom"})
    body = assert_problem(response, 422)
    assert "slice" in body["detail"], body  # the test bundle needs a volume of at least 4 slices


def test_unknown_model_is_404_with_a_suggestion(client: TestClient, ct_study: Callable) -> None:
    response = client.post("/v1/studies?model=tiny_cat", files=multipart(ct_study()), headers=auth("submit"))
    assert "tiny_ct" in assert_problem(response, 404)["detail"]


def test_unsupported_content_type_is_415(client: TestClient) -> None:
    response = client.post("/v1/studies", content=b"{}", headers={**auth("submit"), "Content-Type": "application/json"})
    assert_problem(response, 415)


def test_form_field_that_is_not_a_file_is_422(client: TestClient, ct_study: Callable) -> None:
    response = client.post(
        "/v1/studies", files=multipart(ct_study()), data={"model": "tiny_ct"}, headers=auth("submit")
    )
    assert "query parameters" in assert_problem(response, 422)["detail"]


def test_wait_beyond_the_bound_is_422(client: TestClient) -> None:
    response = client.post("/v1/studies?wait=301", content=b"x", headers={**auth("submit"), "Content-Type": "application/zip"})
    assert_problem(response, 422)


def test_full_queue_answers_503_with_retry_after(make_settings: Callable[..., Settings], ct_study: Callable) -> None:
    with TestClient(create_app(make_settings(max_queued_jobs=1))) as client:
        wait_ready(client)
        client.app.state.services.worker.stop()
        first = client.post("/v1/studies", files=multipart(ct_study()), headers=auth("submit"))
        assert first.status_code == 202
        second = client.post("/v1/studies", files=multipart(ct_study()), headers=auth("submit"))
        assert_problem(second, 503)
        assert int(second.headers["retry-after"]) > 0
