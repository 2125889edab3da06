"""DIMSE client side: C-STORE files to an AE, and pull a study by StudyInstanceUID with C-GET or C-MOVE."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_io.network.destinations import DimseDestination, check_ae_title

log = logging.getLogger(__name__)

_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
_MAX_CONTEXTS = 128


class DimseError(ConnectionError):
    """A DIMSE exchange failed (no association, aborted, or a failure status); the message names the peer.

    ``retryable`` is False when the peer rejected the association permanently (e.g. an AE title it does not know):
    retrying with the same titles cannot succeed, as with HTTP 401 from a DICOMweb destination.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def _new_ae(calling_ae: str, timeout_s: float) -> AE:
    ae = AE(ae_title=check_ae_title(calling_ae))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    return ae


def _associate(ae: AE, peer: DimseDestination, evt_handlers: list | None = None, **kwargs):
    """An established association, or a DimseError that says whether we could not connect or why we were rejected."""
    seen: dict[str, object] = {}

    def on_open(_event: evt.Event) -> None:
        seen["connected"] = True

    def on_pdu(event: evt.Event) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            seen["rejection"] = event.pdu

    handlers = [*(evt_handlers or []), (evt.EVT_CONN_OPEN, on_open), (evt.EVT_PDU_RECV, on_pdu)]
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, evt_handlers=handlers, **kwargs)
    if assoc.is_established:
        return assoc
    rejection = seen.get("rejection")
    if isinstance(rejection, A_ASSOCIATE_RJ):
        permanent = rejection.result == 0x01
        raise DimseError(
            f"association with {peer.name} rejected ({'permanent' if permanent else 'transient'}, "
            f"{rejection.source_str}: {rejection.reason_str}); check our calling AE title "
            f"{ae.ae_title!r} is known to the peer and its AE title is {peer.ae_title!r}",
            retryable=not permanent,
        )
    if not seen.get("connected"):
        raise DimseError(f"could not connect to {peer.name} (refused or timed out); check the host and port")
    state = "aborted" if assoc.is_aborted else "not established"
    raise DimseError(f"association with {peer.name} {state}; check the AE titles, host and port")


def send_instances(
    paths: Iterable[Path], peer: DimseDestination, *, calling_ae: str = "RADINFER", timeout_s: float = 30.0
) -> dict[str, int]:
    """C-STORE every file in one association; SOP Instance UID -> C-STORE status (0x0000 success)."""
    files = []
    contexts: dict[str, set[str]] = {}
    for path in paths:
        meta = pydicom.filereader.read_file_meta_info(path)
        sop_class, ts = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
        files.append((Path(path), str(meta.MediaStorageSOPInstanceUID)))
        contexts.setdefault(sop_class, set()).add(ts)
    if len(contexts) > _MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} SOP classes exceed the {_MAX_CONTEXTS} presentation contexts of one association")
    ae = _new_ae(calling_ae, timeout_s)
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes) + [t for t in _UNCOMPRESSED if t not in syntaxes])
    assoc = _associate(ae, peer)
    statuses: dict[str, int] = {}
    try:
        for path, sop_instance in files:
            status = assoc.send_c_store(path)
            if not status or "Status" not in status:
                raise DimseError(f"no C-STORE response from {peer.name} (association aborted or timed out)")
            statuses[sop_instance] = int(status.Status)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def _study_query(study_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    return query


def _final_status(responses, peer: DimseDestination, what: str) -> Dataset:
    last = None
    for status, _identifier in responses:
        if not status:
            raise DimseError(f"{what} from {peer.name}: no response (association aborted or timed out)")
        last = status
    if last is None:
        raise DimseError(f"{what} from {peer.name}: no response")
    code = int(last.Status)
    if code not in (0x0000, 0xB000):
        raise DimseError(f"{what} from {peer.name} failed with status 0x{code:04X}")
    if code == 0xB000:
        log.warning("%s from %s: %s sub-operation(s) failed", what, peer.name, last.get("NumberOfFailedSuboperations"))
    return last


def get_study(
    peer: DimseDestination, study_uid: str, dest_dir: Path, *, calling_ae: str = "RADINFER", timeout_s: float = 60.0
) -> list[Path]:
    """C-GET a whole study into ``dest_dir`` (``<SOPInstanceUID>.dcm``); the files written."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    ae = _new_ae(calling_ae, timeout_s)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    storage = StoragePresentationContexts[: _MAX_CONTEXTS - 1]
    for context in storage:
        ae.add_requested_context(context.abstract_syntax)  # uncompressed; the peer transcodes if needed
    roles = [build_role(context.abstract_syntax, scp_role=True) for context in storage]
    written: list[Path] = []

    def on_store(event: evt.Event) -> int:
        name = str(event.request.AffectedSOPInstanceUID)
        if not name.replace(".", "").isdigit():
            return 0xC000
        path = dest_dir / f"{name}.dcm"
        with open(path, "wb") as fh:
            fh.write(event.encoded_dataset(include_meta=True))
            fh.flush()
            os.fsync(fh.fileno())
        written.append(path)
        return 0x0000

    assoc = _associate(ae, peer, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        _final_status(
            assoc.send_c_get(_study_query(study_uid), StudyRootQueryRetrieveInformationModelGet), peer, "C-GET"
        )
    finally:
        if assoc.is_established:
            assoc.release()
    return written


def move_study(
    peer: DimseDestination, study_uid: str, move_destination: str, *, calling_ae: str = "RADINFER",
    timeout_s: float = 60.0,
) -> int:
    """C-MOVE a whole study to the AE ``move_destination`` (e.g. our own SCP); the number of instances moved."""
    ae = _new_ae(calling_ae, timeout_s)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = _associate(ae, peer)
    try:
        final = _final_status(
            assoc.send_c_move(
                _study_query(study_uid), check_ae_title(move_destination), StudyRootQueryRetrieveInformationModelMove
            ),
            peer,
            "C-MOVE",
        )
    finally:
        if assoc.is_established:
            assoc.release()
    return int(final.get("NumberOfCompletedSuboperations", 0) or 0)
