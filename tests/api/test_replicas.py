"""Model replicas on several devices: the engine pool picks the least busy replica, merges bundle states, and the
service spreads concurrent jobs over its replicas (two CPU engines stand in for two GPUs)."""

from __future__ import annotations

import threading

import pytest
import torch
from fastapi.testclient import TestClient

from api.main import create_app
from api.services import job_concurrency
from inference.engine import BundleState, BundleStatus, Engine
from inference.registry import Registry
from inference.replicas import EnginePool

from .conftest import auth, multipart, wait_finished, wait_ready

CPU = torch.device("cpu")


def test_pool_hands_out_the_least_busy_engine(tmp_path):
    pool = EnginePool([Engine(Registry([tmp_path]), CPU) for _ in range(3)])
    with pool.acquire() as first, pool.acquire() as second, pool.acquire() as third:
        assert len({id(first), id(second), id(third)}) == 3
    with pool.acquire() as first:
        with pool.acquire() as second:
            assert second is not first
        with pool.acquire() as again:  # second's engine is free again and comes before the third
            assert again is second


def test_pool_status_is_ready_only_where_every_replica_is(tmp_path):
    engines = [Engine(Registry([tmp_path]), CPU) for _ in range(2)]
    engines[0]._status["m"] = BundleStatus("m", BundleState.ready)
    engines[1]._status["m"] = BundleStatus("m", BundleState.failed, "CUDA out of memory")
    merged = EnginePool(engines).status()["m"]
    assert merged.state is BundleState.failed and merged.error == "on cpu: CUDA out of memory"


def test_service_runs_concurrent_jobs_on_different_replicas(make_settings, ct_study, monkeypatch):
    import api.services

    monkeypatch.setattr(api.services, "select_devices", lambda spec: [CPU, CPU])
    both_inside = threading.Barrier(2, timeout=60)
    engines_used: list[int] = []
    analyze = api.services.pipeline.analyze

    def recording(inputs, engine, **kwargs):
        engines_used.append(id(engine))
        both_inside.wait()  # fails (BrokenBarrierError) unless the two jobs run at the same time
        return analyze(inputs, engine, **kwargs)

    monkeypatch.setattr(api.services.pipeline, "analyze", recording)
    with TestClient(create_app(make_settings(workers=1))) as client:  # one per device is the floor: 2 workers
        wait_ready(client)
        assert client.get("/readyz").json()["device"] == "cpu, cpu"
        jobs = [
            client.post("/v1/studies", headers=auth("submit"), files=multipart(ct_study())).json()["job_id"]
            for _ in range(2)
        ]
        assert [wait_finished(client, job)["state"] for job in jobs] == ["succeeded", "succeeded"]
    assert len(set(engines_used)) == 2


def test_each_replica_knows_how_many_jobs_share_its_device(make_settings, monkeypatch):
    import api.services

    monkeypatch.setattr(api.services, "select_devices", lambda spec: [CPU, CPU])
    services = create_app(make_settings(workers=3)).state.services
    assert services.concurrency == 3
    assert [engine.jobs for engine in services.engines.engines] == [2, 2]


@pytest.mark.parametrize("device", ["cuda:0,cpu", "gpu"])
def test_bad_device_lists_are_configuration_errors(make_settings, device):
    with pytest.raises(ValueError):
        create_app(make_settings(device=device))


@pytest.mark.parametrize(
    ("workers", "devices", "expected"),
    [
        (None, ["cpu"], 1),
        (None, ["cuda:0"], 2),
        (None, ["cuda:0", "cuda:1"], 4),
        (1, ["cuda:0", "cuda:1"], 2),  # one per device is the floor
        (3, ["cpu"], 3),
    ],
)
def test_job_concurrency_defaults_to_two_per_gpu_and_one_per_cpu(workers, devices, expected):
    assert job_concurrency(workers, [torch.device(d) for d in devices]) == expected
