"""STOW-RS (PS3.18 10.5): a bounded, incremental ``multipart/related`` parser and the Store Instances Response.

The parser is fed the request body chunk by chunk and writes each ``application/dicom`` part straight to its own
file, so memory stays at one chunk plus a boundary's length. It enforces :class:`StowLimits` while reading (part
count, part size, total size: :class:`~dicom_io.errors.LimitExceededError`, HTTP 413). Each part is then checked
with the project's header pass (:func:`dicom_io.reader.read_header`); a bad instance becomes a FailedSOPSequence
item with a failure reason while the others are stored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from xml.etree import ElementTree as ET

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_io.errors import InputRejected, LimitExceededError, UnsupportedInputError
from dicom_io.limits import Limits
from dicom_io.network.instances import (
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    AcceptInstance,
    InstanceFailure,
    check_instance,
)

log = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
NATIVE_DICOM_NS = "http://dicom.nema.org/PS3.19/models/NativeDICOM"


_MAX_HEADER_BYTES = 16 * 1024
_MAX_PREAMBLE_BYTES = 64 * 1024
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# Unquoted values may hold "/" (``type=application/dicom``, sent by many clients though RFC 2045 wants quotes).
_PARAM = re.compile(rf';\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;",]+)')


class MalformedMultipartError(InputRejected):
    status = 400
    title = "Malformed multipart/related body"


@dataclass(frozen=True)
class StowLimits:
    """Bounds of one STOW-RS request (defaults: 5,000 parts, 512 MiB per part, 2 GiB in all)."""

    max_parts: int = 5000
    max_part_bytes: int = 512 * 1024**2
    max_total_bytes: int = 2 * 1024**3


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` in lower case and its parameters (names lower-cased, quotes removed)."""
    main, _, rest = value.partition(";")
    params = {}
    for name, raw in _PARAM.findall(";" + rest):
        params[name.lower()] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
    return main.strip().lower(), params


class MultipartRelatedParser:
    """Incremental ``multipart/related`` parser writing each part to ``out_dir/NNNNN.dcm``.

    ``feed(chunk)`` as data arrives, then ``close()`` for the list of part files. Every part must be
    ``application/dicom`` (a part without Content-Type takes the request's ``type`` parameter).
    """

    def __init__(self, content_type: str, out_dir: Path, limits: StowLimits) -> None:
        kind, params = parse_media_type(content_type)
        if kind != "multipart/related":
            raise UnsupportedInputError(
                f"Content-Type {kind or '(none)'!r} is not accepted; send multipart/related; type=\"{DICOM}\""
            )
        root_type = params.get("type", DICOM).lower()
        if root_type != DICOM:
            raise UnsupportedInputError(
                f"multipart/related type {root_type!r} is not accepted; only {DICOM} parts (PS3.10 files) are "
                "supported, not metadata with bulk data"
            )
        boundary = params.get("boundary", "")
        if not 1 <= len(boundary) <= 70:
            raise MalformedMultipartError("the multipart/related Content-Type has no valid boundary parameter")
        self._open = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._open
        self._out_dir = Path(out_dir)
        self._limits = limits
        self._buf = bytearray()
        self._state = "preamble"
        self._total = 0
        self._part_bytes = 0
        self._file: IO[bytes] | None = None
        self.parts: list[Path] = []

    def feed(self, data: bytes) -> None:
        self._total += len(data)
        if self._total > self._limits.max_total_bytes:
            self._abort()
            raise LimitExceededError(
                f"the STOW-RS body is larger than {self._limits.max_total_bytes} bytes; send fewer instances per "
                "request or raise the limit"
            )
        self._buf += data
        try:
            while self._step():
                pass
        except BaseException:
            self._abort()
            raise

    def close(self) -> list[Path]:
        """The part files; MalformedMultipartError if the closing boundary never came."""
        if self._state != "done":
            self._abort()
            raise MalformedMultipartError(
                "the multipart/related body ended before its closing boundary; send the complete request"
            )
        if not self.parts:
            raise MalformedMultipartError(f"the multipart/related body has no parts; send one {DICOM} part per instance")
        return self.parts

    # -- states --------------------------------------------------------------------------------------

    def _step(self) -> bool:
        """Consume what the buffer allows; True when another step may make progress."""
        buf = self._buf
        if self._state == "preamble":
            at = buf.find(self._open)
            if at < 0:
                if len(buf) > _MAX_PREAMBLE_BYTES:
                    raise MalformedMultipartError("no multipart boundary found; check the boundary parameter")
                return False
            del buf[: at + len(self._open)]
            self._state = "after_boundary"
            return True
        if self._state == "after_boundary":
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state = "done"
                buf.clear()
                return False
            eol = buf.find(b"\r\n")
            if eol < 0 or buf[:eol].strip(b" \t"):
                if eol >= 0 or len(buf) > 256:
                    raise MalformedMultipartError("a multipart boundary line is not followed by CRLF")
                return False
            del buf[: eol + 2]
            self._state = "headers"
            return True
        if self._state == "headers":
            end = 0 if buf[:2] == b"\r\n" else buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEADER_BYTES:
                    raise MalformedMultipartError(f"the headers of part {len(self.parts) + 1} exceed {_MAX_HEADER_BYTES} bytes")
                return False
            headers = bytes(buf[:end]).decode("latin-1")
            del buf[: end + (2 if end == 0 else 4)]
            self._begin_part(headers)
            return True
        if self._state == "body":
            at = buf.find(self._delimiter)
            if at >= 0:
                self._write(buf[:at])
                del buf[: at + len(self._delimiter)]
                self._end_part()
                self._state = "after_boundary"
                return True
            keep = len(self._delimiter) - 1
            if len(buf) > keep:
                self._write(buf[: len(buf) - keep])
                del buf[: len(buf) - keep]
            return False
        buf.clear()  # epilogue after the closing boundary is ignored
        return False

    def _begin_part(self, headers: str) -> None:
        number = len(self.parts) + 1
        if number > self._limits.max_parts:
            raise LimitExceededError(
                f"the STOW-RS request has more than {self._limits.max_parts} parts; send fewer instances per request"
            )
        kind = DICOM
        for line in headers.split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                kind = parse_media_type(value)[0]
        if kind != DICOM:
            raise UnsupportedInputError(f"part {number} has Content-Type {kind!r}; send {DICOM} parts only")
        path = self._out_dir / f"{number:05d}.dcm"
        self._file = open(path, "wb")  # noqa: SIM115 - closed at the next boundary or on abort
        self._part_bytes = 0
        self.parts.append(path)
        self._state = "body"

    def _write(self, data: bytearray) -> None:
        self._part_bytes += len(data)
        if self._part_bytes > self._limits.max_part_bytes:
            raise LimitExceededError(
                f"part {len(self.parts)} is larger than {self._limits.max_part_bytes} bytes; send smaller instances "
                "or raise the limit"
            )
        assert self._file is not None
        self._file.write(data)

    def _end_part(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None

    def _abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# -- per-instance storage --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreOutcome:
    """What happened to one part: stored (``failure_reason`` None) or failed with a code and a one-line reason."""

    part: int
    sop_class_uid: str
    sop_instance_uid: str
    failure_reason: int | None = None
    detail: str = ""

    @property
    def stored(self) -> bool:
        return self.failure_reason is None


def store_parts(
    parts: Iterable[Path], accept: AcceptInstance, limits: Limits, *, study_uid: str | None = None
) -> list[StoreOutcome]:
    """Check each part with the header pass, hand good ones to ``accept``; one outcome per part, in order."""
    outcomes = []
    for number, path in enumerate(parts, start=1):
        outcome = _store_one(number, Path(path), accept, limits, study_uid)
        if not outcome.stored:
            log.warning("STOW-RS part %d not stored (0x%04X): %s", number, outcome.failure_reason, outcome.detail)
        outcomes.append(outcome)
    return outcomes


def _store_one(number: int, path: Path, accept: AcceptInstance, limits: Limits, study_uid: str | None) -> StoreOutcome:
    try:
        instance = check_instance(path, limits, "stow-rs", study_uid=study_uid)
    except InstanceFailure as exc:
        sop_class, sop_instance = _identifiers(path)
        return StoreOutcome(number, sop_class, sop_instance, exc.status, f"part {number}: {exc.detail}")
    try:
        accept(instance)
    except OSError as exc:
        log.error("STOW-RS part %d could not be kept: %s", number, type(exc).__name__)
        failure = InstanceFailure(OUT_OF_RESOURCES, "the server could not store it")
    except InputRejected as exc:
        failure = InstanceFailure(PROCESSING_FAILURE, exc.detail)
    else:
        return StoreOutcome(number, instance.sop_class_uid, instance.sop_instance_uid)
    return StoreOutcome(number, instance.sop_class_uid, instance.sop_instance_uid, failure.status, f"part {number}: {failure.detail}")


def _identifiers(path: Path) -> tuple[str, str]:
    """SOP Class and Instance UIDs of a failed part, read leniently so that broken parts can still be named."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"], force=True)
        return str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
    except Exception:  # noqa: BLE001 - any parse failure just means "unknown"
        return "", ""


# -- the Store Instances Response --------------------------------------------------------------------------


def response_status(outcomes: list[StoreOutcome]) -> int:
    """200 when all were stored, 202 when some were, 409 when none was (PS3.18 10.5.3)."""
    stored = sum(o.stored for o in outcomes)
    if stored == len(outcomes):
        return 200
    return 202 if stored else 409


def store_instances_response(outcomes: list[StoreOutcome], retrieve_url: str = "") -> Dataset:
    """The Store Instances Response dataset: RetrieveURL, ReferencedSOPSequence, FailedSOPSequence."""
    ds = Dataset()
    ds.RetrieveURL = retrieve_url
    failed = [o for o in outcomes if not o.stored]
    if failed:
        ds.FailedSOPSequence = Sequence([_reference(o) for o in failed])
    stored = [o for o in outcomes if o.stored]
    if stored:
        ds.ReferencedSOPSequence = Sequence([_reference(o) for o in stored])
    return ds


def _reference(outcome: StoreOutcome) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = outcome.sop_class_uid
    item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
    if outcome.failure_reason is not None:
        item.FailureReason = outcome.failure_reason
    return item


def to_dicom_json(ds: Dataset) -> str:
    return ds.to_json()


def to_dicom_xml(ds: Dataset) -> bytes:
    """PS3.19 Native DICOM Model XML for a dataset of string, numeric and sequence attributes."""
    root = ET.Element("NativeDicomModel", xmlns=NATIVE_DICOM_NS)
    _xml_attributes(root, ds)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _xml_attributes(parent: ET.Element, ds: Dataset) -> None:
    for elem in ds:
        attrs = {"tag": f"{elem.tag:08X}", "vr": elem.VR}
        keyword = keyword_for_tag(elem.tag)
        if keyword:
            attrs["keyword"] = keyword
        node = ET.SubElement(parent, "DicomAttribute", attrs)
        if elem.VR == "SQ":
            for number, item in enumerate(elem.value, start=1):
                _xml_attributes(ET.SubElement(node, "Item", number=str(number)), item)
            continue
        if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "PN"):
            raise ValueError(f"{keyword or elem.tag}: VR {elem.VR} is not written by this XML encoder")
        values = elem.value if elem.VM > 1 else ([elem.value] if elem.value not in (None, "") else [])
        for number, value in enumerate(values, start=1):
            ET.SubElement(node, "Value", number=str(number)).text = str(value)
