"""Against a real Orthanc (DICOMweb plugin, authentication on): delivery by STOW-RS and C-STORE, an outage with
retries, queries with QIDO-RS and findscu, and pulling a study by WADO-RS, C-GET and C-MOVE."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_auth
from pydicom.uid import generate_uid
from requests.auth import HTTPBasicAuth

from dicom_io import validate
from dicom_io.network.destinations import DicomWebDestination
from dicom_io.network.dicomweb import DicomWebError, StudyNotFoundError, retrieve_study, stow_instances
from dicom_io.network.scp import ScpConfig, StorageSCP
from dicom_io.network.scu import get_study, move_study
from dicom_io.writers.provenance import ModelProvenance
from dicom_io.writers.sc import secondary_capture
from inference.collector import StudyCollector
from inference.delivery import Delivery, dicom_files
from inference.jobs.files import JobFiles
from inference.jobs.store import JobStore
from inference.pacs import PacsConfig, PacsNode
from tests.network.conftest import ORTHANC_PASSWORD, ORTHANC_USER, OUR_AE, Orthanc, dcmtk

PROVENANCE = ModelProvenance("test_model", "0.0.1", "0" * 64, True, "Research use only; synthetic training data.")


def write_outputs(source_files: list[Path], folder: Path) -> list[Path]:
    """Secondary Capture results of two source slices, in a new series of the source study (as a job writes)."""
    folder.mkdir()
    series = generate_uid()
    paths = []
    for number, path in enumerate(source_files[:2], start=1):
        source = pydicom.dcmread(path)
        rgb = np.zeros((16, 16, 3), dtype=np.uint8)
        rgb[4:8, 4:8, 0] = 255
        image = secondary_capture(source, rgb, provenance=PROVENANCE, series_instance_uid=series, series_number=900,
                                  instance_number=number, description="test overlay", paired_body_part=False)
        paths.append(folder / f"overlay_{number}.dcm")
        image.save_as(paths[-1])
    (folder / "result.json").write_text("{}")  # not DICOM: never delivered
    return paths


def qido_instances(orthanc: Orthanc, study_uid: str) -> list[str]:
    session = create_session_from_auth(HTTPBasicAuth(ORTHANC_USER, ORTHANC_PASSWORD))
    client = DICOMwebClient(url=orthanc.dicomweb.base_url, session=session)
    found = client.search_for_instances(study_instance_uid=study_uid)
    return sorted(pydicom.Dataset.from_json(item).SOPInstanceUID for item in found)


def findscu_instance_count(orthanc: Orthanc, study_uid: str, out: Path) -> int:
    out.mkdir()
    result = dcmtk("findscu", "-S", "-aet", OUR_AE, "-aec", "ORTHANC", "-X", "-od", str(out),
                   "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                   "-k", "NumberOfStudyRelatedInstances", "127.0.0.1", str(orthanc.dicom_port))
    assert result.returncode == 0, result.stderr
    answers = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
    assert len(answers) == 1
    return int(answers[0].NumberOfStudyRelatedInstances)


@pytest.fixture
def job(tmp_path: Path) -> tuple[JobStore, str]:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    yield store, store.create(model="test_model").id
    store.close()


def test_results_reach_orthanc_by_stow_rs_and_c_store_once(orthanc: Orthanc, study, tmp_path: Path, job) -> None:
    store, job_id = job
    outputs = write_outputs(study, tmp_path / "output")
    delivery = Delivery([orthanc.dicomweb, orthanc.dimse], store.set_delivery, calling_ae=OUR_AE, base_delay_s=0.2)
    delivery.start()
    try:
        delivery.enqueue(job_id, dicom_files(tmp_path / "output"))
        assert delivery.wait_idle(30)
    finally:
        delivery.stop()
    status = store.get(job_id).delivery
    assert set(status) == {orthanc.dicomweb.name, orthanc.dimse.name}
    assert ORTHANC_PASSWORD not in str(status)
    assert all(s["state"] == "delivered" and s["attempts"] == 1 and s["instances"] == 2 for s in status.values())
    study_uid = str(pydicom.dcmread(outputs[0]).StudyInstanceUID)
    expected = sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in outputs)
    assert qido_instances(orthanc, study_uid) == expected  # sent twice (two destinations), stored once
    assert findscu_instance_count(orthanc, study_uid, tmp_path / "find") == 2
    assert orthanc.rest("/statistics")["CountInstances"] == 2
    # what Orthanc serves back is byte-identical to what we sent, and a valid Secondary Capture per dciodvfy
    back = {p.read_bytes() for p in retrieve_study(orthanc.dicomweb, study_uid, tmp_path / "back")}
    assert back == {p.read_bytes() for p in outputs}
    if validate.available():
        assert all(validate.dciodvfy(p).ok for p in outputs)


def test_orthanc_down_then_up_delivers_once(orthanc: Orthanc, study, tmp_path: Path, job) -> None:
    store, job_id = job
    outputs = write_outputs(study, tmp_path / "output")
    attempts_seen = threading.Event()

    def record(jid: str, status: dict) -> None:
        store.set_delivery(jid, status)
        if all(s["attempts"] >= 2 for s in status.values()):
            attempts_seen.set()

    orthanc.stop()
    delivery = Delivery([orthanc.dicomweb, orthanc.dimse], record, calling_ae=OUR_AE, base_delay_s=0.3,
                        max_delay_s=1.0, max_attempts=30, timeout_s=5)
    delivery.start()
    try:
        delivery.enqueue(job_id, outputs)
        assert attempts_seen.wait(30)
        failing = store.get(job_id).delivery
        assert all(s["state"] == "pending" and s["error"] for s in failing.values())
        orthanc.start()
        assert delivery.wait_idle(30)
        # a second hand-over of the same results (e.g. after a server restart) re-sends the same UIDs
        delivery.enqueue(job_id, outputs)
        assert delivery.wait_idle(30)
    finally:
        delivery.stop()
    status = store.get(job_id).delivery
    assert all(s["state"] == "delivered" for s in status.values()), status
    study_uid = str(pydicom.dcmread(outputs[0]).StudyInstanceUID)
    assert len(qido_instances(orthanc, study_uid)) == 2
    assert orthanc.rest("/statistics")["CountInstances"] == 2


def test_dicomweb_client_errors_from_orthanc(orthanc: Orthanc, study, tmp_path: Path) -> None:
    wrong = DicomWebDestination(orthanc.dicomweb.base_url, ORTHANC_USER, "wrong-password")
    with pytest.raises(DicomWebError, match="HTTP 401") as info:
        stow_instances(wrong, study[:1])
    assert not info.value.retryable and "wrong-password" not in str(info.value)
    with pytest.raises(StudyNotFoundError):
        retrieve_study(orthanc.dicomweb, "1.2.3.4.5.6.7.8.9", tmp_path / "none")


def test_pull_study_by_wado_rs_c_get_and_c_move(orthanc: Orthanc, study, tmp_path: Path) -> None:
    result = stow_instances(orthanc.dicomweb, study)
    expected = sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in study)
    assert sorted(result.stored) == expected and not result.failed
    study_uid = str(pydicom.dcmread(study[0]).StudyInstanceUID)
    pixels = {str(ds.SOPInstanceUID): ds.pixel_array for ds in map(pydicom.dcmread, study)}

    def check(paths: list[Path]) -> None:
        got = [pydicom.dcmread(p) for p in paths]
        assert sorted(str(ds.SOPInstanceUID) for ds in got) == expected
        for ds in got:
            assert np.array_equal(ds.pixel_array, pixels[str(ds.SOPInstanceUID)])

    check(retrieve_study(orthanc.dicomweb, study_uid, tmp_path / "wado"))
    check(get_study(orthanc.dimse, study_uid, tmp_path / "cget", calling_ae=OUR_AE))

    submitted: list[list[Path]] = []
    collector = StudyCollector(tmp_path / "collect", lambda d: submitted.append(sorted(d.iterdir())) or "job",
                               quiet_period_s=60)
    scp = StorageSCP(ScpConfig(incoming_dir=tmp_path / "incoming", host="127.0.0.1", port=orthanc.scp_port,
                               allowed_calling_aets=frozenset({"ORTHANC"})), collector.add)
    scp.start()
    try:
        assert move_study(orthanc.dimse, study_uid, OUR_AE, calling_ae=OUR_AE) == len(study)
    finally:
        scp.stop()
    check(sorted((collector.root / study_uid).iterdir()))
    assert collector.pending_studies() == {study_uid: len(study)}


@pytest.mark.parametrize("method", ["wado-rs", "c-get"])
def test_pacs_node_pull_submits_the_fetched_study(orthanc: Orthanc, study, tmp_path: Path, method: str) -> None:
    stow_instances(orthanc.dicomweb, study)
    study_uid = str(pydicom.dcmread(study[0]).StudyInstanceUID)
    seen: list[list[str]] = []

    def submit(folder: Path) -> str:
        seen.append(sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in folder.iterdir()))
        return "f" * 32

    source = orthanc.dicomweb if method == "wado-rs" else orthanc.dimse
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    node = PacsNode(PacsConfig(work_dir=tmp_path / "dicom", ae_title=OUR_AE, pull_source=source), submit=submit,
                    store=store, files=JobFiles(tmp_path / "data"))
    try:
        assert node.pull(study_uid) == "f" * 32
    finally:
        store.close()
    assert seen == [sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in study)]
    assert list((tmp_path / "dicom" / "pull").iterdir()) == []  # the fetched copy is cleaned up


def test_delivery_with_wrong_credentials_fails_at_once_without_retrying(orthanc: Orthanc, study, job) -> None:
    store, job_id = job
    wrong = DicomWebDestination(orthanc.dicomweb.base_url, ORTHANC_USER, "wrong-password")
    delivery = Delivery([wrong], store.set_delivery, base_delay_s=0.1, max_attempts=5)
    delivery.start()
    try:
        delivery.enqueue(job_id, study[:1])
        assert delivery.wait_idle(20)
    finally:
        delivery.stop()
    status = store.get(job_id).delivery[wrong.name]
    assert status["state"] == "failed" and status["attempts"] == 1 and "HTTP 401" in status["error"]
    assert "wrong-password" not in str(store.get(job_id).delivery)
