"""Liveness answers at once; readiness waits for the models; metrics report requests, jobs and the queue."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from inference.engine import Engine
from tests.api.conftest import auth, multipart, wait_finished, wait_ready


def test_readyz_is_503_until_models_are_loaded(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_load_all = Engine.load_all

    def gated_load_all(self: Engine):
        release.wait(60)
        return real_load_all(self)

    monkeypatch.setattr(Engine, "load_all", gated_load_all)
    with TestClient(create_app(make_settings())) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.json()["ready"] is False
        release.set()
        wait_ready(client)
        ready = client.get("/readyz").json()
        assert ready["models"] == ["tiny_ct"] and ready["device"] == "cpu"
        assert ready["decoders"]["Explicit VR Little Endian"] is True


def test_job_submitted_while_models_load_runs_once_they_are_ready(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, ct_study: Callable
) -> None:
    release = threading.Event()
    real_load_all = Engine.load_all
    monkeypatch.setattr(Engine, "load_all", lambda self: (release.wait(60), real_load_all(self))[1])
    with TestClient(create_app(make_settings())) as client:
        job_id = client.post("/v1/studies", files=multipart(ct_study()), headers=auth("submit")).json()["job_id"]
        assert client.get(f"/v1/jobs/{job_id}", headers=auth("read")).json()["state"] in ("queued", "running")
        release.set()
        assert wait_finished(client, job_id)["state"] == "succeeded"


def test_metrics_report_requests_job_stages_queue_and_memory(client: TestClient, ct_study: Callable) -> None:
    job_id = client.post("/v1/studies", files=multipart(ct_study()), headers=auth("submit")).json()["job_id"]
    assert wait_finished(client, job_id)["state"] == "succeeded"
    text = client.get("/metrics", headers=auth("admin")).text
    assert 'http_requests_total{method="POST",route="/v1/studies",status="202"}' in text
    assert 'job_stage_seconds_count{model="tiny_ct",stage="inference"}' in text
    assert "queue_depth 0.0" in text
    assert 'device_memory_bytes{device="cpu",kind="rss"}' in text
