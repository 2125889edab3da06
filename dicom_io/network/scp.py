"""A C-ECHO and C-STORE SCP (pynetdicom) that answers success only once the instance is on disk.

Each received instance is written with its file meta to ``incoming_dir``, flushed (fsync), checked with the
header pass (:func:`~dicom_io.network.instances.check_instance`) and handed to ``accept``, which moves it
somewhere durable (the study collector). Only then is 0x0000 returned; otherwise a failure status (0xA700 out of
resources, 0xC000 cannot understand). Associations from calling AE titles outside the allow-list, or addressed
to another called AE title, are rejected (A-ASSOCIATE-RJ, "AE title not recognised"). Logs carry AE titles and counts, never patient data:
pynetdicom's own logger is raised to WARNING unless the deployment configured it.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from dicom_io.errors import InputRejected
from dicom_io.limits import Limits
from dicom_io.network.destinations import check_ae_title
from dicom_io.network.instances import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    AcceptInstance,
    InstanceFailure,
    check_instance,
)

log = logging.getLogger(__name__)

SUCCESS = 0x0000

# pynetdicom reads whatever PDU length a peer declares into memory and never checks it against the maximum it
# announced; we refuse larger P-DATA-TF PDUs (PS3.8 9.3.5) and cap the others (A-ASSOCIATE-RQ, ...) at 1 MiB.
_P_DATA_TF = 0x04
_MAX_OTHER_PDU_BYTES = 1024 * 1024
# A-ABORT, source service-provider (2), reason invalid-PDU-parameter value (6) (PS3.8 9.3.8).
_ABORT_INVALID_PDU = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6])
INSTANCE_HEADER_ALLOWANCE = 64 * 1024 * 1024
"""Bytes an instance may hold besides its pixel data (header, overlays, icons) over C-STORE."""


def parse_ae_titles(text: str | None) -> frozenset[str] | None:
    """``RADINFER_DICOM_ALLOWED_AE_TITLES``: comma-separated titles, or ``*`` for any (None). Empty: none allowed."""
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if items == ["*"]:
        return None
    return frozenset(check_ae_title(item, "allowed calling AE title") for item in items)


@dataclass(frozen=True)
class ScpConfig:
    """Settings of the SCP. ``allowed_calling_aets`` None accepts any caller; an empty set accepts none."""

    incoming_dir: Path
    ae_title: str = "RADINFER"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aets: frozenset[str] | None = frozenset()
    max_associations: int = 10
    max_pdu_bytes: int = 262_144
    network_timeout_s: float = 60.0
    limits: Limits = field(default_factory=Limits)

    @property
    def max_instance_bytes(self) -> int:
        """The largest instance received: the pixel data one may declare, plus room for its header."""
        return self.limits.max_pixel_bytes_per_instance + INSTANCE_HEADER_ALLOWANCE


class StorageSCP:
    """``start()`` serves in background threads; ``stop()`` closes the listening socket and open associations."""

    def __init__(self, config: ScpConfig, accept: AcceptInstance) -> None:
        self.config = config
        self.accept = accept
        self._server = None
        ae = AE(ae_title=check_ae_title(config.ae_title))
        ae.require_called_aet = True  # the peer must address us by our AE title
        ae.maximum_associations = config.max_associations
        ae.maximum_pdu_size = config.max_pdu_bytes
        ae.network_timeout = config.network_timeout_s
        ae.acse_timeout = min(30.0, config.network_timeout_s)
        ae.dimse_timeout = config.network_timeout_s
        if config.allowed_calling_aets is not None:
            # pynetdicom treats an empty list as "anyone": an impossible title keeps "nobody" closed.
            ae.require_calling_aet = sorted(config.allowed_calling_aets) or ["\\NONE\\"]
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._ae = ae

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None:
            raise RuntimeError("the SCP is not running; call start() first")
        return self._server.server_address[1]

    def start(self) -> None:
        pynetdicom_log = logging.getLogger("pynetdicom")
        if pynetdicom_log.level == logging.NOTSET:
            pynetdicom_log.setLevel(logging.WARNING)
        self.config.incoming_dir.mkdir(parents=True, exist_ok=True)
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self._server = self._ae.start_server(
            (self.config.host, self.config.port), block=False, evt_handlers=handlers
        )
        log.info("DICOM SCP %s listening on %s:%d", self.config.ae_title, self.config.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_connection(self, event: evt.Event) -> None:
        """Bound the PDUs this association may send us before pynetdicom reads any of them."""
        limit_pdu_length(event.assoc.dul.socket, self.config.max_pdu_bytes, self.config.max_instance_bytes)

    def _on_rejected(self, event: evt.Event) -> None:
        calling = event.assoc.requestor.ae_title
        log.warning("DICOM association from AE %r at %s rejected", calling, event.assoc.requestor.address)

    def _on_store(self, event: evt.Event) -> int:
        calling = event.assoc.requestor.ae_title
        fd, name = tempfile.mkstemp(prefix="cstore-", suffix=".dcm", dir=self.config.incoming_dir)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(event.encoded_dataset(include_meta=True))
                fh.flush()
                os.fsync(fh.fileno())
            instance = check_instance(path, self.config.limits, calling)
            self.accept(instance)
        except InstanceFailure as exc:
            log.warning("C-STORE from AE %r refused (0x%04X): %s", calling, exc.status, exc.detail)
            path.unlink(missing_ok=True)
            return exc.status
        except InputRejected as exc:
            log.warning("C-STORE from AE %r refused: %s", calling, exc.detail)
            path.unlink(missing_ok=True)
            return CANNOT_UNDERSTAND
        except OSError as exc:
            log.error("C-STORE from AE %r could not be stored: %s", calling, type(exc).__name__)
            path.unlink(missing_ok=True)
            return OUT_OF_RESOURCES
        return SUCCESS


def limit_pdu_length(assoc_socket, max_data_bytes: int, max_message_bytes: int | None = None) -> None:
    """Make ``assoc_socket`` (a pynetdicom AssociationSocket) abort a PDU whose declared length exceeds the limit,
    and a message (one instance: its dataset fragments up to the last one) larger than ``max_message_bytes``.

    pynetdicom's DUL reads each PDU with two ``recv`` calls, the 6-byte header (type, reserved, length) and then
    the body; the header is checked before the body is read, and a PDU that is too long gets an A-ABORT and an
    empty read, which the DUL handles as a closed connection. pynetdicom keeps a message's fragments in memory
    until it is complete, so without the message bound one allowed peer could fill the memory with one instance.
    """
    receive = assoc_socket.recv
    state = {"header": True, "type": 0, "dataset_bytes": 0}

    def refuse(what: str, size: int, limit: int) -> bytearray:
        log.warning("DICOM association aborted: %s of %d bytes exceeds the %d accepted", what, size, limit)
        _abort(assoc_socket.socket)
        return bytearray()

    def recv(nr_bytes: int) -> bytearray:
        data = receive(nr_bytes)
        if not state["header"] or len(data) != 6:
            state["header"] = True
            if state["type"] == _P_DATA_TF and max_message_bytes is not None:
                size = _dataset_bytes(data, state["dataset_bytes"], max_message_bytes)
                if size is None:
                    return refuse("an instance", state["dataset_bytes"] + len(data), max_message_bytes)
                state["dataset_bytes"] = size
            return data
        pdu_type, _reserved, length = struct.unpack(">BBL", data)
        limit = (max_data_bytes or 0xFFFFFFFF) if pdu_type == _P_DATA_TF else _MAX_OTHER_PDU_BYTES
        if length > limit:
            return refuse("a PDU", length, limit)
        state["header"], state["type"] = False, pdu_type
        return data

    assoc_socket.recv = recv


def _dataset_bytes(body: bytes, so_far: int, limit: int) -> int | None:
    """The running size of the message being received after the P-DATA-TF ``body`` (0 after a message's last
    fragment), or None as soon as one message exceeds ``limit`` bytes.

    Each PDV item (PS3.8 9.3.5.1): item length (4 bytes), presentation context ID (1), message control header
    (1: bit 0 set for a command, bit 1 set for the last fragment), then the fragment.
    """
    at = 0
    while at + 6 <= len(body):
        (length,) = struct.unpack_from(">L", body, at)
        control = body[at + 5]
        if not control & 0x01:
            so_far += max(0, length - 2)
            if so_far > limit:
                return None
            if control & 0x02:
                so_far = 0
        at += 4 + length
    return so_far


def _abort(sock: socket.socket | None) -> None:
    """Send an A-ABORT and stop the connection without reading the rest of the oversized PDU."""
    if sock is None:
        return
    try:
        sock.sendall(_ABORT_INVALID_PDU)
        sock.shutdown(socket.SHUT_WR)  # the A-ABORT goes out before the FIN; the DUL closes the socket
    except OSError:
        pass
