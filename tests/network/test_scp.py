"""The C-ECHO/C-STORE SCP with DCMTK as the real client, feeding the study collector."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_io.network.scp import ScpConfig, StorageSCP, parse_ae_titles
from inference.collector import StudyCollector
from tests.network.conftest import CANARY_ID, CANARY_NAME, dcmtk

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK is not installed (Debian dcmtk)")

QUIET_S = 1.0


@dataclass
class Node:
    scp: StorageSCP
    collector: StudyCollector
    incoming: Path
    submitted: list[tuple[Path, list[str]]]
    lock: threading.Lock

    def wait_submitted(self, count: int, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.submitted) >= count:
                    return
            time.sleep(0.05)
        raise AssertionError(f"{count} submission(s) expected, got {len(self.submitted)}")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    submitted: list[tuple[Path, list[str]]] = []
    lock = threading.Lock()

    def submit(folder: Path) -> str:
        with lock:
            submitted.append((folder, sorted(p.name for p in folder.iterdir())))
            return f"{len(submitted):032x}"

    collector = StudyCollector(tmp_path / "collect", submit, quiet_period_s=QUIET_S)
    config = ScpConfig(
        incoming_dir=tmp_path / "incoming", host="127.0.0.1", port=0,
        allowed_calling_aets=parse_ae_titles("STORESCU, PACS"), max_associations=2,
    )
    scp = StorageSCP(config, collector.add)
    collector.start()
    scp.start()
    yield Node(scp, collector, config.incoming_dir, submitted, lock)
    scp.stop()
    collector.stop()


def test_echoscu_gets_a_c_echo_answer(node: Node) -> None:
    result = dcmtk("echoscu", "-aet", "STORESCU", "-aec", "RADINFER", "127.0.0.1", str(node.scp.port))
    assert result.returncode == 0, result.stderr


def test_storescu_study_lands_on_disk_and_is_submitted_once(
    node: Node, study: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    result = dcmtk("storescu", "-aet", "STORESCU", "-aec", "RADINFER", "+sd", "127.0.0.1", str(node.scp.port), str(study[0].parent))
    assert result.returncode == 0, result.stderr
    first = pydicom.dcmread(study[0])
    folder = node.collector.root / str(first.StudyInstanceUID)
    # storescu has its answers, so every instance is already on disk, before the quiet period ends.
    expected = sorted(f"{pydicom.dcmread(p).SOPInstanceUID}.dcm" for p in study)
    assert sorted(p.name for p in folder.iterdir()) == expected
    assert pydicom.dcmread(folder / f"{first.SOPInstanceUID}.dcm").PixelData == first.PixelData
    node.wait_submitted(1)
    time.sleep(QUIET_S * 2.5)  # a second submission would have happened by now
    assert len(node.submitted) == 1
    assert node.submitted[0][1] == expected
    assert not folder.exists() and node.collector.pending_studies() == {}
    assert list(node.incoming.iterdir()) == []
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert CANARY_NAME not in logged and CANARY_ID not in logged and "CANARY" not in logged


@pytest.mark.parametrize(
    ("calling", "called", "reason"),
    [("INTRUDER", "RADINFER", "Calling AE Title Not Recognized"), ("STORESCU", "OTHER", "Called AE Title Not Recognized")],
    ids=["unknown-calling-ae", "wrong-called-ae"],
)
def test_unknown_ae_is_rejected_and_nothing_stored(node: Node, study: list[Path], calling, called, reason) -> None:
    result = dcmtk("storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(node.scp.port), str(study[0]))
    assert result.returncode != 0
    assert reason in result.stderr
    assert list(node.incoming.iterdir()) == []
    assert [p for p in node.collector.root.iterdir() if p.name != ".submitting"] == []


def test_association_limit_rejects_a_third_association(node: Node) -> None:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", node.scp.port, ae_title="RADINFER") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        result = dcmtk("echoscu", "-aet", "PACS", "-aec", "RADINFER", "127.0.0.1", str(node.scp.port))
        assert result.returncode != 0 and "Local Limit Exceeded" in result.stderr
    finally:
        for assoc in held:
            assoc.release()


def test_parse_ae_titles() -> None:
    assert parse_ae_titles(" A ,B") == frozenset({"A", "B"})
    assert parse_ae_titles("*") is None
    assert parse_ae_titles("") == frozenset()
    with pytest.raises(ValueError, match="not valid"):
        parse_ae_titles("WAY_TOO_LONG_AE_TITLE")


def test_association_announces_the_configured_max_pdu(node: Node) -> None:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="RADINFER")
    try:
        assert assoc.is_established
        assert assoc.acceptor.maximum_length == node.scp.config.max_pdu_bytes == 262_144
    finally:
        assoc.release()
