"""POST/GET /v1/evaluations on the real app: cases run as bulk-priority jobs through the server's worker."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from inference.jobs.store import PRIORITY_BULK

from .conftest import ADMIN, READER, server_settings


@pytest.fixture
def client(dataset, tmp_path):
    with TestClient(create_app(server_settings(dataset, tmp_path))) as test_client:
        yield test_client


def _headers(key=ADMIN):
    return {"Authorization": f"Bearer {key}"}


def _regression(data_dir, labels, **extra):
    """A request to score the spheres' volumes (regression) of ``data_dir`` against ``labels``."""
    return {"model": "spheres", "data_dir": str(data_dir), "labels": str(labels), "kind": "regression",
            "prediction": "summary.sphere_volume_mm3", **extra}


@pytest.fixture
def labels(dataset, geometry, tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    voxel = float(np.prod(geometry.spacing))
    rows = [f"{p.case_id},{p.mask.sum() * voxel}" for p in dataset.phantoms]
    (folder / "volumes.csv").write_text("case_id,value\n" + "\n".join(rows) + "\n")
    return folder / "volumes.csv"


def test_evaluation_runs_as_bulk_jobs_and_reports_metrics(client, dataset, labels):
    store = client.app.state.services.store
    priorities = []
    create = store.create

    def recording_create(**kwargs):
        priorities.append(kwargs.get("priority"))
        return create(**kwargs)

    store.create = recording_create
    body = _regression(dataset.data, labels, within=1.0)
    answer = client.post("/v1/evaluations", json=body, headers=_headers())
    assert answer.status_code == 202, answer.text
    evaluation_id = answer.json()["id"]
    deadline = time.monotonic() + 60
    while (status := client.get(f"/v1/evaluations/{evaluation_id}", headers=_headers()).json())["state"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["state"] == "succeeded", status
    assert (status["done"], status["total"], status["progress"]) == (4, 4, 1.0)
    assert status["metrics"]["metrics"]["mae"] == pytest.approx(0.0, abs=1e-6)
    assert status["metrics"]["metrics"]["share_within"] == 1.0
    assert priorities == [PRIORITY_BULK] * 4
    assert store.list()[1] == 0  # the per-case jobs were removed once scored
    report = client.get(status["links"]["report"], headers=_headers())
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "Bland-Altman" in report.text


@pytest.mark.parametrize(
    ("key", "field", "value", "status"),
    [
        (READER, None, None, 403),
        (ADMIN, "data_dir", "/etc", 403),
        (ADMIN, "model", "nope", 404),
        (ADMIN, "kind", "ranking", 422),
    ],
    ids=["read-role", "path-outside-roots", "unknown-model", "bad-kind"],
)
def test_evaluation_requests_refused(client, dataset, labels, key, field, value, status):
    body = {"model": "spheres", "data_dir": str(dataset.data), "labels": str(labels)}
    if field:
        body[field] = value
    answer = client.post("/v1/evaluations", json=body, headers=_headers(key))
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")


def test_unknown_evaluation_is_404(client):
    assert client.get("/v1/evaluations/" + "0" * 32, headers=_headers()).status_code == 404


def _wait(client, evaluation_id):
    deadline = time.monotonic() + 60
    while (status := client.get(f"/v1/evaluations/{evaluation_id}", headers=_headers()).json())["state"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    return status


def test_evaluation_interrupted_by_a_restart_resumes_remaining_cases(dataset, labels, tmp_path):
    settings = server_settings(dataset, tmp_path)  # labels lie in tmp_path/labels
    outputs = tmp_path / "server" / "evaluations"
    body = _regression(dataset.data, labels)

    def server():
        return TestClient(create_app(settings))

    with server() as first:
        evaluation_id = first.post("/v1/evaluations", json=body, headers=_headers()).json()["id"]
        assert _wait(first, evaluation_id)["state"] == "succeeded"
    # Make it look like the server died after two cases: status still "running", two records on disk.
    folder = outputs / evaluation_id
    lines = (folder / "cases.jsonl").read_text().splitlines()
    (folder / "cases.jsonl").write_text("\n".join(lines[:2]) + "\n")
    status = json.loads((folder / "status.json").read_text())
    (folder / "status.json").write_text(json.dumps({**status, "state": "running", "metrics": None}))

    with server() as second:
        interrupted = second.get(f"/v1/evaluations/{evaluation_id}", headers=_headers()).json()
        assert interrupted["state"] == "interrupted"
        assert f"POST /v1/evaluations/{evaluation_id}/resume" in interrupted["error"]
        store = second.app.state.services.store
        created = []
        create = store.create
        store.create = lambda **kwargs: created.append(kwargs) or create(**kwargs)
        answer = second.post(f"/v1/evaluations/{evaluation_id}/resume", headers=_headers())
        assert answer.status_code == 202, answer.text
        status = _wait(second, evaluation_id)
        assert status["state"] == "succeeded", status
        assert len(created) == 2  # only the two cases that were not recorded
        assert status["counts"]["scored"] == 4
        again = second.post(f"/v1/evaluations/{evaluation_id}/resume", headers=_headers())
        assert again.status_code == 409
        assert again.json()["detail"].startswith(f"Evaluation {evaluation_id} has succeeded;")


def test_wrong_prediction_key_fails_the_evaluation_naming_the_keys(client, dataset, labels):
    body = _regression(dataset.data, labels, prediction="summary.nope")
    answer = client.post("/v1/evaluations", json=body, headers=_headers())
    assert answer.status_code == 202, answer.text
    status = _wait(client, answer.json()["id"])
    assert status["state"] == "failed", status
    assert "summary.nope" in status["error"] and "sphere_volume_mm3" in status["error"]
    assert status["done"] < 4  # stopped at the first case, not run over the whole set


def test_malformed_prediction_key_or_a_file_as_data_dir_is_422(client, dataset, labels):
    body = _regression(dataset.data, labels)
    answer = client.post("/v1/evaluations", json={**body, "prediction": "nope"}, headers=_headers())
    assert answer.status_code == 422 and "summary.<key> or max_confidence" in answer.json()["detail"]
    answer = client.post(
        "/v1/evaluations",
        json={**body, "prediction": "summary.x", "data_dir": str(labels)},
        headers=_headers(),
    )
    assert answer.status_code == 422
    assert "is a file, not a folder" in answer.json()["detail"]


def test_evaluation_that_scores_no_case_is_failed_with_its_report(client, labels):
    data = labels.parent / "broken"
    for case in ("a", "b"):
        (data / case).mkdir(parents=True)
        (data / case / "x.dcm").write_bytes(b"not dicom")
    csv_path = labels.parent / "broken.csv"
    csv_path.write_text("case_id,value\na,1\nb,2\n")
    body = _regression(data, csv_path)
    answer = client.post("/v1/evaluations", json=body, headers=_headers())
    assert answer.status_code == 202, answer.text
    status = _wait(client, answer.json()["id"])
    assert status["state"] == "failed", status
    assert status["error"].startswith("No case could be scored")
    assert status["counts"] == {"evaluated": 2, "scored": 0, "model_failure": 2}
    report = client.get(status["links"]["report"], headers=_headers())
    assert report.status_code == 200 and "label-summary" in report.text
