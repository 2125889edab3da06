"""Delivery's own robustness, against a local stand-in PACS (our SCP): a deleted job, an unexpected error, a dead
thread, "retry now" during a back-off, concurrent, refused and forced redelivery, and /readyz."""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from api.config import Settings
from api.main import create_app
from dicom_io.network.destinations import DimseDestination
from dicom_io.network.instances import ReceivedInstance
from dicom_io.network.scp import ScpConfig, StorageSCP
from inference.delivery import Delivery
from inference.errors import JobStateError
from inference.jobs.files import JobFiles
from inference.jobs.store import JobState, JobStore
from inference.metrics import REGISTRY
from inference.pacs import PacsConfig, PacsNode
from tests.api.conftest import api_keys_setting, auth, multipart, wait_finished, wait_ready, write_test_bundle
from tests.network.conftest import CANARY_NAME, write_study


def wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


class Peer:
    """A stand-in PACS on a fixed port, started when the test says so (until then: connection refused)."""

    def __init__(self, root: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.received: list[ReceivedInstance] = []
        self.scp = StorageSCP(ScpConfig(incoming_dir=root / "peer", ae_title="PACS", host="127.0.0.1",
                                        port=self.port, allowed_calling_aets=frozenset({"RADINFER"})),
                              self.received.append)
        self.destination = DimseDestination("PACS", "127.0.0.1", self.port)

    def uids(self) -> list[str]:
        return sorted(r.sop_instance_uid for r in self.received)


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    peer = Peer(tmp_path)
    yield peer
    peer.scp.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    yield store
    store.close()


@pytest.fixture
def files(tmp_path: Path) -> JobFiles:
    return JobFiles(tmp_path / "data")


def succeeded_job(store: JobStore, files: JobFiles, result: Path) -> str:
    """A job that succeeded with ``result`` as its one DICOM output."""
    job = store.create(model="m")
    store.claim_next("test-worker")
    output = files.output_dir(job.id)
    output.mkdir(parents=True)
    shutil.copy(result, output / result.name)
    store.finish(job.id, JobState.succeeded)
    return job.id


def delivered_job(delivery: Delivery, store: JobStore, files: JobFiles, result: Path) -> str:
    """A succeeded job with ``result`` as its output, handed to ``delivery``."""
    job_id = succeeded_job(store, files, result)
    delivery.enqueue(job_id, [files.output_dir(job_id) / result.name])
    return job_id


def uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def state(store: JobStore, job_id: str, peer: Peer) -> dict:
    return (store.get(job_id).delivery or {}).get(peer.destination.name, {})


def test_a_job_deleted_while_its_delivery_waits_is_dropped_and_later_jobs_are_still_delivered(
    store: JobStore, files: JobFiles, peer: Peer, study: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inference.delivery")
    delivery = Delivery([peer.destination], store.set_delivery, base_delay_s=0.1, max_delay_s=0.1,
                        max_attempts=1000, timeout_s=5)
    delivery.start()
    try:
        deleted = delivered_job(delivery, store, files, study[0])
        wait_for(lambda: state(store, deleted, peer).get("attempts", 0) >= 1)  # the PACS is down: back-off
        store.delete(deleted)  # what DELETE /v1/jobs/{id} does
        files.remove(deleted)
        wait_for(lambda: delivery.wait_idle(0))  # its next attempt finds the job gone and drops the schedule
        peer.scp.start()
        later = delivered_job(delivery, store, files, study[1])
        assert delivery.wait_idle(20)
        assert delivery.alive
    finally:
        delivery.stop()
    assert state(store, later, peer)["state"] == "delivered"
    assert peer.uids() == [uid(study[1])]
    assert f"job {deleted} was deleted; its delivery is cancelled" in caplog.text


def test_cancel_drops_a_waiting_delivery_at_once(store: JobStore, files: JobFiles, peer: Peer, study) -> None:
    delivery = Delivery([peer.destination], store.set_delivery, base_delay_s=30, timeout_s=5)
    delivery.start()
    try:
        job_id = delivered_job(delivery, store, files, study[0])
        wait_for(lambda: state(store, job_id, peer).get("attempts", 0) == 1)
        assert not delivery.wait_idle(0.2)  # the second attempt waits 30 s
        delivery.cancel(job_id)
        assert delivery.wait_idle(0.2)
    finally:
        delivery.stop()


def test_an_unexpected_error_of_one_attempt_is_logged_without_phi_and_delivery_goes_on(
    store: JobStore, files: JobFiles, peer: Peer, study, caplog: pytest.LogCaptureFixture
) -> None:
    failures = [OperationalError("UPDATE jobs SET delivery=?", {"name": CANARY_NAME}, Exception(CANARY_NAME))]

    def record(job_id: str, status: dict) -> None:  # the database fails once, after the first attempt
        if failures and any(s["attempts"] for s in status.values()):
            raise failures.pop()
        store.set_delivery(job_id, status)

    peer.scp.start()
    errors_before = REGISTRY.get_sample_value("delivery_errors_total")
    delivery = Delivery([peer.destination], record, base_delay_s=0.1, timeout_s=5)
    delivery.start()
    try:
        first = delivered_job(delivery, store, files, study[0])
        assert delivery.wait_idle(20)
        second = delivered_job(delivery, store, files, study[1])
        assert delivery.wait_idle(20)
        assert delivery.alive
    finally:
        delivery.stop()
    assert state(store, second, peer)["state"] == "delivered"
    assert peer.uids() == sorted([uid(study[0]), uid(study[1])])
    assert delivery.unexpected_errors == 1
    assert REGISTRY.get_sample_value("delivery_errors_total") == errors_before + 1
    assert f"job {first}: delivery to {peer.destination.name}: unexpected OperationalError (1 so far)" in caplog.text
    assert CANARY_NAME not in caplog.text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's death
def test_a_dead_delivery_thread_is_started_again_by_the_poller(
    tmp_path: Path, store: JobStore, files: JobFiles, peer: Peer, study, caplog: pytest.LogCaptureFixture
) -> None:
    deaths = [SystemExit()]  # something no handler of an attempt catches

    def record(job_id: str, status: dict) -> None:
        if deaths and any(s["attempts"] for s in status.values()):
            raise deaths.pop()
        store.set_delivery(job_id, status)

    peer.scp.start()
    config = PacsConfig(work_dir=tmp_path / "dicom", destinations=(peer.destination,), poll_interval_s=0.1)
    node = PacsNode(config, submit=lambda folder: "", store=store, files=files)
    node.delivery.record = record
    node.start()
    try:
        succeeded_job(store, files, study[0])
        wait_for(lambda: not deaths)  # the thread ran the attempt and died
        second = succeeded_job(store, files, study[1])
        wait_for(lambda: state(store, second, peer).get("state") == "delivered")
        assert node.delivery.alive and node.problems() == []
    finally:
        node.stop()
    assert "the delivery thread had stopped; starting it again" in caplog.text


@pytest.mark.parametrize("outcome", ["failed", "pending"])
def test_concurrent_redelivery_sends_once_also_during_a_back_off(
    tmp_path: Path, store: JobStore, files: JobFiles, peer: Peer, study, outcome: str
) -> None:
    """``failed``: the one attempt allowed failed; ``pending``: the next attempt is due in an hour ("retry now")."""
    config = PacsConfig(work_dir=tmp_path / "dicom", destinations=(peer.destination,), poll_interval_s=0.1,
                        delivery_base_delay_s=3600, delivery_max_delay_s=3600,
                        delivery_max_attempts=1 if outcome == "failed" else 8)
    node = PacsNode(config, submit=lambda folder: "", store=store, files=files)
    node.start()
    try:
        job_id = succeeded_job(store, files, study[0])
        wait_for(lambda: state(store, job_id, peer).get("attempts") == 1)  # the PACS is down
        assert state(store, job_id, peer)["state"] == outcome
        peer.scp.start()
        answers: list[object] = []
        barrier = threading.Barrier(4)

        def post() -> None:
            barrier.wait()
            try:
                answers.append(node.redeliver(job_id)[peer.destination.name]["state"])
            except JobStateError as exc:
                answers.append(str(exc))

        threads = [threading.Thread(target=post) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert node.delivery.wait_idle(20)
    finally:
        node.stop()
    assert answers.count("pending") == 1, answers  # one is sent now; the others are told it is under way or done
    assert all("under way" in a or "delivered to every destination" in a for a in answers if a != "pending")
    assert state(store, job_id, peer)["state"] == "delivered"
    assert peer.uids() == [uid(study[0])]  # sent once


def test_redelivery_over_http_says_when_nothing_was_sent_forces_on_request_and_readyz_sees_delivery(
    tmp_path: Path, peer: Peer, study
) -> None:
    write_test_bundle(tmp_path / "models")
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", bundled_models=False,
                        device="cpu", api_keys=api_keys_setting(), destinations=peer.destination.name)
    peer.scp.start()
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        services = client.app.state.services
        ct = write_study(tmp_path / "ct", 4)
        job_id = client.post("/v1/studies", files=multipart(ct), headers=auth("submit")).json()["job_id"]
        assert wait_finished(client, job_id)["state"] == "succeeded"
        shutil.copy(study[0], services.files.output_dir(job_id) / "result.dcm")  # as a bundle writing DICOM does
        url = f"/v1/jobs/{job_id}/delivery"
        while (client.get(f"/v1/jobs/{job_id}", headers=auth("read")).json()["delivery"] or {}).get(
            peer.destination.name, {}
        ).get("state") != "delivered":  # the poller or this request sends it, whichever comes first
            assert client.post(url, headers=auth("admin")).status_code in (202, 409)
            time.sleep(0.2)

        again = client.post(url, headers=auth("admin"))
        assert again.status_code == 409 and "nothing was sent" in again.json()["detail"]
        forced = client.post(url + "?force=true", headers=auth("admin"))
        assert forced.status_code == 202, forced.text
        assert forced.json()["delivery"][peer.destination.name]["state"] == "pending"
        assert services.pacs.delivery.wait_idle(20)
        assert peer.uids() == [uid(study[0])] * 2

        peer.scp.stop()  # the PACS goes away: a forced delivery waits out its back-off ...
        assert client.post(url + "?force=true", headers=auth("admin")).status_code == 202
        wait_for(lambda: (client.get(f"/v1/jobs/{job_id}", headers=auth("read")).json()["delivery"] or {})
                 .get(peer.destination.name, {}).get("attempts", 0) >= 1)
        assert not services.pacs.delivery.wait_idle(0.2)
        assert client.delete(f"/v1/jobs/{job_id}", headers=auth("admin")).status_code == 204
        assert services.pacs.delivery.wait_idle(1)  # ... until the job is deleted: then it is dropped at once

        assert client.get("/readyz").status_code == 200
        services.pacs.delivery.stop()  # as if the thread had died
        readiness = client.get("/readyz")
        assert readiness.status_code == 503
        assert "result delivery thread is not running" in readiness.json()["error"]
