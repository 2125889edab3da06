"""Hospital-style inputs found in an acceptance check: oversized PDUs at the SCP, an unquoted STOW-RS ``type``
parameter, and a destination that refuses our association for good (wrong called AE title)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.pdu_primitives import MaximumLengthNotification
from pynetdicom.sop_class import CTImageStorage

from dicom_io.network.destinations import DimseDestination
from dicom_io.network.instances import ReceivedInstance
from dicom_io.network.scp import ScpConfig, StorageSCP
from dicom_io.network.scu import DimseError, send_instances
from dicom_io.network.stow import parse_media_type
from dicom_io.synthetic import write_ct_series
from inference.delivery import Delivery

MAX_PDU = 16_384


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[tuple[StorageSCP, list[ReceivedInstance]]]:
    received: list[ReceivedInstance] = []
    config = ScpConfig(incoming_dir=tmp_path / "incoming", host="127.0.0.1", port=0, allowed_calling_aets=None,
                       max_pdu_bytes=MAX_PDU)
    server = StorageSCP(config, received.append)
    server.start()
    yield server, received
    server.stop()


def _ct_slice(folder: Path, size: int = 256) -> pydicom.Dataset:
    path = write_ct_series(np.zeros((1, size, size), np.float32), folder)[0]
    return pydicom.dcmread(path)


def _store(port: int, ds: pydicom.Dataset, *, ignore_peer_max_pdu: bool) -> int | None:
    """C-STORE ``ds``; with ``ignore_peer_max_pdu`` the client sends 8 MiB PDUs whatever the SCP announced."""
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="RADINFER")
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == MAX_PDU
    if ignore_peer_max_pdu:
        for item in assoc.acceptor.user_information:
            if isinstance(item, MaximumLengthNotification):
                item.maximum_length_received = 8 * 1024 * 1024
    status = assoc.send_c_store(ds)
    code = int(status.Status) if status and "Status" in status else None
    if assoc.is_established:
        assoc.release()
    return code


def test_scp_aborts_a_p_data_pdu_longer_than_its_maximum(scp, tmp_path: Path) -> None:
    server, received = scp
    ds = _ct_slice(tmp_path / "ct")  # 128 KiB of pixels: one PDU of that size when the client ignores our maximum
    started = time.monotonic()
    assert _store(server.port, ds, ignore_peer_max_pdu=True) is None  # aborted: no C-STORE response at all
    assert time.monotonic() - started < 5
    assert received == []
    assert list((tmp_path / "incoming").iterdir()) == []
    assert _store(server.port, ds, ignore_peer_max_pdu=False) == 0x0000  # PDUs within the limit: stored
    assert [r.sop_instance_uid for r in received] == [str(ds.SOPInstanceUID)]


def test_scp_aborts_an_oversized_association_request_without_reading_it(scp) -> None:
    server, _received = scp
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0) + b"\0" * 1024)  # declares a 4 GiB A-ASSOCIATE-RQ
        started = time.monotonic()
        answer = sock.recv(64)
        assert time.monotonic() - started < 5
    assert answer[:1] == b"\x07"  # A-ABORT


def test_stow_accepts_an_unquoted_type_parameter(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from tests.network.conftest import multipart_related, write_study
    from tests.network.test_stow_route import KEY, Sink, make_app

    assert parse_media_type("multipart/related; type=application/dicom; boundary=b1")[1] == {
        "type": "application/dicom", "boundary": "b1"}
    study = write_study(tmp_path / "study", slices=2)
    body, _content_type = multipart_related([p.read_bytes() for p in study], boundary="b1")
    sink = Sink(tmp_path / "kept")
    with TestClient(make_app(tmp_path, sink)) as client:
        response = client.post("/dicomweb/studies", content=body, headers={
            "Authorization": f"Bearer {KEY}", "Content-Type": "multipart/related; type=application/dicom; boundary=b1"})
    assert response.status_code == 200, response.text
    assert sorted(i.sop_instance_uid for i in sink.instances) == sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in study)


@pytest.fixture
def strict_scp(tmp_path: Path) -> Iterator[StorageSCP]:
    config = ScpConfig(incoming_dir=tmp_path / "incoming", host="127.0.0.1", port=0,
                       allowed_calling_aets=frozenset({"RADINFER"}))
    server = StorageSCP(config, lambda instance: None)
    server.start()
    yield server
    server.stop()


def test_c_store_to_a_peer_that_rejects_our_ae_titles_says_why_and_is_final(strict_scp, tmp_path: Path) -> None:
    files = write_ct_series(np.zeros((1, 8, 8), np.float32), tmp_path / "ct")
    wrong_called = DimseDestination("WRONGAE", "127.0.0.1", strict_scp.port)
    with pytest.raises(DimseError, match=r"rejected \(permanent.*Called AE title not recognised") as info:
        send_instances(files, wrong_called, calling_ae="RADINFER", timeout_s=5)
    assert info.value.retryable is False
    with pytest.raises(DimseError, match=r"rejected \(permanent.*Calling AE title not recognised"):
        send_instances(files, DimseDestination("RADINFER", "127.0.0.1", strict_scp.port), calling_ae="OTHER")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(DimseError, match="could not connect") as info:
        send_instances(files, DimseDestination("RADINFER", "127.0.0.1", closed_port), timeout_s=5)
    assert info.value.retryable is True

    statuses: list[dict] = []
    delivery = Delivery([wrong_called], lambda _job, status: statuses.append(status), base_delay_s=0.1, max_attempts=5)
    delivery.start()
    try:
        delivery.enqueue("job", files)
        assert delivery.wait_idle(20)
    finally:
        delivery.stop()
    final = statuses[-1][wrong_called.name]
    assert final["state"] == "failed" and final["attempts"] == 1
    assert "Called AE title not recognised" in final["error"]


def test_scp_aborts_an_instance_larger_than_the_limits_however_it_is_fragmented(tmp_path: Path, monkeypatch) -> None:
    """pynetdicom keeps an instance's fragments in memory until the last one: an allowed peer sending one huge
    instance in small PDUs is stopped once the instance exceeds what the limits allow."""
    from dicom_io import limits as limits_module
    from dicom_io.network import scp as scp_module

    monkeypatch.setattr(scp_module, "INSTANCE_HEADER_ALLOWANCE", 8 * 1024)
    received: list[ReceivedInstance] = []
    config = ScpConfig(incoming_dir=tmp_path / "incoming", host="127.0.0.1", port=0, allowed_calling_aets=None,
                       max_pdu_bytes=MAX_PDU, limits=limits_module.Limits(max_pixel_bytes_per_instance=64 * 1024))
    server = StorageSCP(config, received.append)
    server.start()
    try:
        big = _ct_slice(tmp_path / "big", size=256)  # 128 KiB of pixels, in 16 KiB PDUs
        small = _ct_slice(tmp_path / "small", size=128)  # 32 KiB
        assert _store(server.port, big, ignore_peer_max_pdu=False) is None  # aborted mid-instance
        assert _store(server.port, small, ignore_peer_max_pdu=False) == 0x0000
    finally:
        server.stop()
    assert [r.sop_instance_uid for r in received] == [str(small.SOPInstanceUID)]


def test_dataset_bytes_counts_dataset_fragments_per_message() -> None:
    def pdv(size: int, control: int) -> bytes:
        return struct.pack(">LBB", size + 2, 1, control) + b"\0" * size

    from dicom_io.network.scp import _dataset_bytes

    body = pdv(10, 0x03) + pdv(100, 0x00)  # a command's last fragment (not counted), then a dataset fragment
    assert _dataset_bytes(body, 0, 1000) == 100
    assert _dataset_bytes(pdv(50, 0x02), 100, 1000) == 0  # the last dataset fragment ends the message
    assert _dataset_bytes(pdv(950, 0x00), 100, 1000) is None
