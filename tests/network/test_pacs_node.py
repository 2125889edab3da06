"""PacsNode: the wired DICOM node (SCP -> collector -> submit; succeeded job -> delivery to a DICOM peer)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicom_io.network.destinations import DimseDestination
from dicom_io.network.instances import ReceivedInstance
from dicom_io.network.scp import ScpConfig, StorageSCP
from inference.jobs.files import JobFiles
from inference.jobs.store import JobState, JobStore
from inference.pacs import PacsConfig, PacsNode
from tests.network.conftest import dcmtk

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK is not installed (Debian dcmtk)")


def wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[StorageSCP, list[ReceivedInstance]]]:
    """A stand-in PACS: an SCP that accepts our AE title and keeps what it receives."""
    received: list[ReceivedInstance] = []
    scp = StorageSCP(ScpConfig(incoming_dir=tmp_path / "peer", ae_title="PACS", host="127.0.0.1", port=0,
                               allowed_calling_aets=frozenset({"RADINFER"})), received.append)
    scp.start()
    yield scp, received
    scp.stop()


def test_node_submits_received_study_and_delivers_a_succeeded_job(tmp_path: Path, peer, study) -> None:
    pacs, received = peer
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    files = JobFiles(tmp_path / "data")
    submitted: list[int] = []
    lock = threading.Lock()

    def submit(folder: Path) -> str:
        job_id = store.create(model="m").id  # stored before the test sees the submission, so it can claim it
        with lock:
            submitted.append(len(list(folder.iterdir())))
        return job_id

    config = PacsConfig(
        work_dir=tmp_path / "data" / "dicom", dicom_port=0, dicom_host="127.0.0.1",
        allowed_ae_titles=frozenset({"MODALITY"}), quiet_period_s=0.5,
        destinations=(DimseDestination("PACS", "127.0.0.1", pacs.port),), poll_interval_s=0.2,
        delivery_base_delay_s=0.2,
    )
    node = PacsNode(config, submit=submit, store=store, files=files)
    node.start()
    try:
        result = dcmtk("storescu", "-aet", "MODALITY", "-aec", "RADINFER", "+sd", "127.0.0.1", str(node.scp.port),
                       str(study[0].parent))
        assert result.returncode == 0, result.stderr
        wait_for(lambda: submitted == [len(study)])

        job = store.claim_next("test-worker")  # the job submit() queued; pretend the worker ran it
        output = files.output_dir(job.id)
        output.mkdir(parents=True)
        for path in study[:2]:
            shutil.copy(path, output / path.name)
        (output / "result.json").write_text("{}")
        store.finish(job.id, JobState.succeeded)
        wait_for(lambda: (store.get(job.id).delivery or {}).get(f"dimse://PACS@127.0.0.1:{pacs.port}", {})
                 .get("state") == "delivered")
    finally:
        node.stop()
        store.close()
    assert sorted(r.sop_instance_uid for r in received) == sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in study[:2])
    assert all(r.source == "RADINFER" for r in received)


def test_a_failed_delivery_is_sent_again_on_request_once_the_peer_is_back(tmp_path: Path, study) -> None:
    import socket

    from inference.errors import JobStateError

    with socket.socket() as probe:  # a port where nothing listens yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    files = JobFiles(tmp_path / "data")
    config = PacsConfig(
        work_dir=tmp_path / "data" / "dicom", destinations=(DimseDestination("PACS", "127.0.0.1", port),),
        poll_interval_s=0.2, delivery_base_delay_s=0.1, delivery_max_attempts=1,
    )
    node = PacsNode(config, submit=lambda folder: "", store=store, files=files)
    received: list[ReceivedInstance] = []
    peer = StorageSCP(ScpConfig(incoming_dir=tmp_path / "peer", ae_title="PACS", host="127.0.0.1", port=port,
                                allowed_calling_aets=frozenset({"RADINFER"})), received.append)
    node.start()
    name = f"dimse://PACS@127.0.0.1:{port}"
    try:
        queued = store.create(model="m")
        with pytest.raises(JobStateError, match="only a succeeded job"):
            node.redeliver(queued.id)
        job = store.claim_next("test-worker")
        output = files.output_dir(job.id)
        output.mkdir(parents=True)
        shutil.copy(study[0], output / study[0].name)
        store.finish(job.id, JobState.succeeded)
        wait_for(lambda: (store.get(job.id).delivery or {}).get(name, {}).get("state") == "failed")
        peer.start()
        status = node.redeliver(job.id)
        assert status[name]["state"] == "pending" and status[name]["attempts"] == 0
        wait_for(lambda: store.get(job.id).delivery[name]["state"] == "delivered")
        with pytest.raises(JobStateError, match="delivered to every destination; nothing was sent"):
            node.redeliver(job.id)  # nothing left to send: said so, not a silent 202
        time.sleep(0.5)
        assert len(received) == 1
        assert node.redeliver(job.id, force=True)[name]["state"] == "pending"  # the PACS lost them: send again
        wait_for(lambda: store.get(job.id).delivery[name]["state"] == "delivered")
    finally:
        node.stop()
        peer.stop()
        store.close()
    assert [r.sop_instance_uid for r in received] == [str(pydicom.dcmread(study[0]).SOPInstanceUID)] * 2
