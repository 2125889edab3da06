"""Header pass: read every file's header (never its pixels) and check all limits before anything is decoded.

Each file must be DICOM Part 10 (128-byte preamble, ``DICM``, file meta with a TransferSyntaxUID). The dataset is
parsed up to the pixel data element, whose position and declared length are recorded so the decode pass can read
pixels directly and truncation is caught here. Deflated datasets are inflated with a bound. Every error names the
file (basename), the tag or keyword, the value and the fix.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO

import pydicom.uid as uids
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from dicom_io.archive import unpack
from dicom_io.codecs import (
    HEADER_INFLATE_BYTES,
    BoundedInflater,
    expected_pixel_bytes,
    pixel_bytes,
    require_decodable,
)
from dicom_io.errors import (
    DecodeError,
    InputRejected,
    LimitExceededError,
    NotDicomError,
    UnsupportedInputError,
)
from dicom_io.fastheader import scan_dataset, shared_tag
from dicom_io.limits import Limits
from dicom_io.rawvalues import conversion_cannot_fail, header_value
from dicom_io.series import group_series
from dicom_io.types import InstanceHeader, PixelDataLocation, SkippedInstance, Study
from dicom_io.writers.provenance import MANUFACTURER

__all__ = ["is_part10", "read_header", "read_headers", "unpack"]

_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_MAX_META_VALUE = 1 << 16
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00009: "DoubleFloatPixelData", 0x7FE00008: "FloatPixelData"}
_PIXEL_TAG_SET = frozenset(PIXEL_TAGS)
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
MAX_UID_CHARS = 64
_ITEM, _SEQ_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
_KNOWN_SYNTAXES = {str(uid): uid for uid in uids.AllTransferSyntaxes}
"""The UID objects of the known transfer syntaxes, so that each file does not build and validate its own."""


class _Corrupt(Exception):
    """Raised from the element guard to abort parsing of garbage quickly."""


class _ForeignFile(NotDicomError):
    """A file whose bytes are not DICOM at all (a README, Thumbs.db, a viewer program next to the images)."""


def read_headers(paths: list[Path], limits: Limits) -> Study:
    """Header pass over ``paths``: one Study with image series grouped, non-image instances in ``skipped``.

    Files that are not DICOM at all (no 'DICM' at byte 128, not a raw dataset, not empty or all zeros: the README,
    Thumbs.db or viewer that CD exports and zipped folders carry) are skipped when the request holds DICOM files,
    and rejected (415) when it holds nothing else. Empty, zero-filled and truncated files are always rejected: they
    may be a slice that was lost in transfer.
    """
    if not paths:
        raise InputRejected("the request contains no files; send the DICOM files of one study")
    if len(paths) > limits.max_files:
        raise LimitExceededError(f"{len(paths)} files exceed the limit of {limits.max_files}; send fewer files per "
                                 "request or raise RADINFER_MAX_FILES")
    images: list[InstanceHeader] = []
    skipped: list[SkippedInstance] = []
    studies: dict[str, str] = {}
    total_pixels = 0
    foreign: list[_ForeignFile] = []
    for path in paths:
        try:
            result = read_header(Path(path), limits)
        except _ForeignFile as exc:
            foreign.append(exc)
            skipped.append(SkippedInstance(Path(path).name, "not a DICOM file"))
            continue
        if isinstance(result, SkippedInstance):
            skipped.append(result)
            continue
        ds = result.dataset
        study_uid = str(header_value(ds, "StudyInstanceUID", "") or "")
        if not study_uid:
            raise InputRejected("StudyInstanceUID (0020,000D) is missing; every instance needs its study UID",
                                filename=result.path.name)
        if len(study_uid) > MAX_UID_CHARS:  # job stores and PACS hold 64 (VR UI); PostgreSQL refused the insert
            raise InputRejected(f"StudyInstanceUID (0020,000D) is {len(study_uid)} characters long; DICOM allows "
                                f"at most {MAX_UID_CHARS}", filename=result.path.name)
        studies.setdefault(study_uid, result.path.name)
        if len(studies) > 1:
            first, second = list(studies.values())[:2]
            raise InputRejected(f"files belong to more than one study (StudyInstanceUID differs between {first} "
                                f"and {second}); send one study per request")
        if str(header_value(ds, "Manufacturer", "") or "") == MANUFACTURER:
            # our own SEG/SR/SC sent back with the study (PACS routing rules forward whole studies): never input
            skipped.append(SkippedInstance(result.path.name, "a radinfer result (results are not analysed)"))
            continue
        if result.pixel is None:
            sop = UID(str(ds.get("SOPClassUID", "")))
            skipped.append(SkippedInstance(result.path.name, f"no pixel data (SOP class {sop.name or sop})"))
            continue
        total_pixels += expected_pixel_bytes(ds)
        if total_pixels > limits.max_pixel_bytes_total:
            raise LimitExceededError(
                f"the study's pixel data exceed {limits.max_pixel_bytes_total} bytes in total; send fewer series "
                "or raise RADINFER_MAX_PIXEL_BYTES_TOTAL",
                filename=result.path.name,
            )
        images.append(result)
    if foreign and len(foreign) == len(paths):
        raise foreign[0]  # no DICOM file at all: the client sent the wrong files
    if not studies:
        return Study(study_instance_uid="", series=[], skipped=skipped)
    return Study(study_instance_uid=next(iter(studies)), series=group_series(images), skipped=skipped)


def read_header(path: Path, limits: Limits) -> InstanceHeader | SkippedInstance:
    """Read one file's header and check its limits; DICOMDIR files come back as SkippedInstance."""
    name = path.name
    with open(path, "rb") as fp:
        head = fp.read(132)
        if not head:
            raise NotDicomError("the file is empty (0 bytes); send complete DICOM Part 10 files", filename=name)
        if len(head) < 132 or head[128:132] != b"DICM":
            foreign = head.strip(b"\x00") and not _looks_like_dataset(head)
            raise (_ForeignFile if foreign else NotDicomError)(_no_meta_message(head), filename=name)
        meta = _read_meta(fp, name)
        if str(header_value(meta, "MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS:
            return SkippedInstance(name, "DICOMDIR (media directory, not an image)")
        text = str(header_value(meta, "TransferSyntaxUID"))
        ts = _KNOWN_SYNTAXES.get(text) or UID(text)
        dataset_offset = fp.tell()
        if not ts.is_transfer_syntax or ts in uids.PrivateTransferSyntaxes:
            raise UnsupportedInputError(f"TransferSyntaxUID (0002,0010) {ts} is not a known DICOM transfer "
                                        "syntax; re-send the file as Explicit VR Little Endian", filename=name)
        if ts == uids.DeflatedExplicitVRLittleEndian:
            inflater = BoundedInflater(fp, limits.max_inflated_bytes, name)
            ds, stream, pixel = _parse_deflated(inflater, ts, dataset_offset, name, limits)
        else:
            stream = fp
            ds, pixel = _parse(stream, ts, dataset_offset, name, limits)
        ds.file_meta = meta
        header = InstanceHeader(path=path, dataset=ds, pixel=pixel)
        if pixel is None:
            return header
        _check_uids(header)
        declared_bytes = _check_image(header, limits)
        require_decodable(ts, name)
        if ts == uids.DeflatedExplicitVRLittleEndian:
            # Count (without keeping) the rest of the stream, bounded by what the header says must follow.
            bound = stream.tell() + declared_bytes + HEADER_INFLATE_BYTES
            inflater.inflate_to(bound + 1, keep=False)
            if not inflater.complete:
                raise LimitExceededError(
                    f"the deflated dataset inflates to more than {bound} bytes, beyond the {pixel.keyword} its "
                    "header declares (deflate bomb?); re-send the file uncompressed",
                    filename=name,
                )
            available = inflater.total - stream.tell()
        else:
            here = stream.tell()
            available = stream.seek(0, io.SEEK_END) - here
            stream.seek(here)
        _check_complete(header, stream, ts, available, declared_bytes)
    return header


def _parse(stream: BinaryIO, ts: UID, dataset_offset: int, name: str, limits: Limits
           ) -> tuple[Dataset, PixelDataLocation | None]:
    ds = _read_dataset(stream, ts, name, limits)
    implicit, little = ds.original_encoding
    return ds, _locate_pixel_data(stream, bool(implicit), bool(little), dataset_offset, name)


def _parse_deflated(inflater: BoundedInflater, ts: UID, dataset_offset: int, name: str, limits: Limits
                    ) -> tuple[Dataset, io.BytesIO, PixelDataLocation | None]:
    """Inflate just enough of the dataset to parse its header: 1 MiB, then x4 up to HEADER_INFLATE_BYTES."""
    target = 1 << 20
    while True:
        inflater.inflate_to(target)
        stream = io.BytesIO(inflater.data)
        try:
            ds, pixel = _parse(stream, ts, dataset_offset, name, limits)
        except DecodeError as exc:
            if not isinstance(exc.__cause__, EOFError) or inflater.complete or target >= HEADER_INFLATE_BYTES:
                raise
        else:
            if pixel is not None or inflater.complete:
                return ds, stream, pixel
            if target >= HEADER_INFLATE_BYTES:
                raise LimitExceededError(f"the deflated dataset header exceeds {HEADER_INFLATE_BYTES} bytes; "
                                         "re-send the file uncompressed", filename=name)
        target *= 4


def is_part10(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM Part 10 file ('DICM' after the 128-byte preamble)."""
    with open(path, "rb") as fh:
        return fh.read(132)[128:] == b"DICM"


def _looks_like_dataset(head: bytes) -> bool:
    """Whether ``head`` starts like a DICOM dataset written without preamble and file meta (group 0002 or 0008)."""
    return len(head) >= 4 and struct.unpack("<H", head[:2])[0] in (0x0002, 0x0008)


def _no_meta_message(head: bytes) -> str:
    if _looks_like_dataset(head):
        return ("no file meta: the file has no 128-byte preamble and 'DICM' prefix (a raw dataset, not DICOM Part "
                "10); re-export it as a Part 10 file (e.g. dcmconv, or pydicom save_as(enforce_file_format=True))")
    return ("no file meta: the bytes are not DICOM (no 'DICM' prefix at byte 128); send DICOM Part 10 files or a "
            "zip of them")


def _read_meta(fp: BinaryIO, name: str) -> FileMetaDataset:
    """Parse the file meta group (0002,xxxx), always explicit VR little endian, leaving ``fp`` after it.

    A small dedicated parser: pydicom's generic reader costs more than the rest of a CT header pass.
    """
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    while True:
        start = fp.tell()
        head = fp.read(8)
        if len(head) < 8 or struct.unpack("<H", head[:2])[0] != 0x0002:
            fp.seek(start)
            break
        group, elem = struct.unpack("<HH", head[:4])
        vr = head[4:6].decode("ascii", "replace")
        if vr in _LONG_VRS:
            extra = fp.read(4)
            if len(extra) < 4:
                raise NotDicomError("the file meta information (group 0002) is truncated; re-export the file",
                                    filename=name)
            (length,) = struct.unpack("<L", extra)
        elif vr.isalpha() and vr.isupper():
            (length,) = struct.unpack("<H", head[6:8])
        else:
            raise NotDicomError(f"the file meta element ({group:04X},{elem:04X}) has no valid VR; the file meta "
                                "must be explicit VR little endian, re-export the file", filename=name)
        if length > _MAX_META_VALUE:
            raise NotDicomError(f"the file meta element ({group:04X},{elem:04X}) claims {length} bytes; "
                                "re-export the file", filename=name)
        value = fp.read(length)
        raw = RawDataElement(shared_tag(group << 16 | elem), vr, length, value, start, False, True)
        try:
            if len(value) < length:
                raise EOFError("value ends early")
            lazy = vr in _TEXT_VRS or conversion_cannot_fail(vr, value)  # converted when first read
            elements[raw.tag] = raw if lazy else convert_raw_data_element(raw)
        except Exception as exc:  # pydicom raises several types for malformed values
            raise NotDicomError(f"the file meta element ({group:04X},{elem:04X}) is corrupt ({exc}); re-export the "
                                "file", filename=name) from exc
    meta = FileMetaDataset(elements)  # one dict, not one validated __setitem__ per element
    if not str(header_value(meta, "TransferSyntaxUID", "")).strip():
        raise NotDicomError("no file meta TransferSyntaxUID (0002,0010); re-export the file as DICOM Part 10",
                            filename=name)
    return meta


def _read_dataset(stream: BinaryIO, ts: UID, name: str, limits: Limits) -> Dataset:
    seen: list[int] = []

    def guard(tag: BaseTag, vr: str | None, length: int) -> bool:
        """Stop at pixel data; abort on garbage (group 0000, tags out of order) instead of parsing it slowly.

        pydicom re-reads the first element once when the VR encoding differs from the transfer syntax, so a
        repeat of the very first tag is allowed.
        """
        if seen and (tag < seen[-1] or (tag == seen[-1] and len(seen) > 1)) or tag >> 16 == 0:
            raise _Corrupt(f"data element ({tag >> 16:04X},{tag & 0xFFFF:04X}) is out of order")
        seen.append(int(tag))
        return int(tag) in PIXEL_TAGS

    try:
        ds = scan_dataset(stream, implicit=ts.is_implicit_VR, stop_tags=_PIXEL_TAG_SET) if ts.is_little_endian else None
        if ds is None:  # not the common case: pydicom's reader, whose errors describe the problem
            ds = read_dataset(stream, ts.is_implicit_VR, ts.is_little_endian, stop_when=guard)
        _check_depth(ds, 1, limits, name)
    except RecursionError as exc:
        raise LimitExceededError(f"sequences are nested deeper than {limits.max_sequence_depth} levels; remove "
                                 "the nested sequences or raise RADINFER_MAX_SEQUENCE_DEPTH", filename=name) from exc
    except InputRejected:
        raise
    except Exception as exc:  # pydicom raises many types on garbage; all mean "this header cannot be read"
        raise DecodeError(f"the dataset header is corrupt or truncated ({exc}); re-send the complete file",
                          filename=name) from exc
    return ds


def _check_depth(ds: Dataset, depth: int, limits: Limits, name: str) -> None:
    """Reject sequences nested too deep, and convert now every element whose conversion can fail.

    Binary and unknown VRs raise on malformed values (wrong length, unknown VR), so they are converted here and
    fail as a DecodeError instead of surfacing later; text VRs only warn and are left lazy (they are most of a
    header, and converting them all would double the header pass time), and so are binary values whose conversion
    cannot fail (``conversion_cannot_fail``). Elements are visited in tag order, as ``Dataset.elements`` does.
    """
    for raw in sorted(ds.values(), key=_tag_number):
        vr = raw.VR
        if vr is None:
            try:
                vr = dictionary_VR(raw.tag)
            except KeyError:
                vr = "UN"
        if vr in _TEXT_VRS or (isinstance(raw, RawDataElement) and conversion_cannot_fail(vr, raw.value)):
            continue
        elem = ds[raw.tag]
        if elem.VR != "SQ":
            continue
        if depth > limits.max_sequence_depth:
            raise LimitExceededError(
                f"sequence {elem.keyword or elem.tag} is nested {depth} levels deep, more than the limit of "
                f"{limits.max_sequence_depth}; remove the nested sequences or raise RADINFER_MAX_SEQUENCE_DEPTH",
                filename=name,
            )
        for item in elem.value or []:
            _check_depth(item, depth + 1, limits, name)


def _tag_number(elem: RawDataElement | DataElement) -> int:
    return int(elem.tag)


def _locate_pixel_data(stream: BinaryIO, implicit: bool, little: bool, dataset_offset: int, name: str
                       ) -> PixelDataLocation | None:
    """Parse the pixel data element header at the current position (where the dataset reader stopped)."""
    start = stream.tell()
    head = stream.read(12)
    if len(head) < 8:
        return None
    endian = "<" if little else ">"
    group, elem = struct.unpack(endian + "HH", head[:4])
    keyword = PIXEL_TAGS.get(group << 16 | elem)
    if keyword is None:
        return None
    if implicit:
        (length,) = struct.unpack(endian + "L", head[4:8])
        header_len = 8
    else:
        if len(head) < 12:
            raise DecodeError(f"the {keyword} element header is truncated; re-send the complete file", filename=name)
        (length,) = struct.unpack(endian + "L", head[8:12])
        header_len = 12
    stream.seek(start + header_len)
    is_file = not isinstance(stream, io.BytesIO)
    return PixelDataLocation(
        keyword=keyword,
        value_offset=start + header_len if is_file else None,
        length=None if length == 0xFFFFFFFF else length,
        dataset_offset=dataset_offset,
    )


def _check_image(header: InstanceHeader, limits: Limits) -> int:
    """Check the image size fields and limits; the pixel data size in bytes the header declares."""
    ds, name = header.dataset, header.path.name
    values: dict[str, int] = {}
    for keyword, tag, default in (("Rows", "(0028,0010)", None), ("Columns", "(0028,0011)", None),
                                  ("BitsAllocated", "(0028,0100)", None), ("SamplesPerPixel", "(0028,0002)", 1),
                                  ("NumberOfFrames", "(0028,0008)", 1)):
        raw = header_value(ds, keyword, default)
        if raw in (None, "") and default is None:
            raise DecodeError(f"{keyword} {tag} is missing or empty; an image needs it, fix the header",
                              filename=name)
        try:
            value = int(raw if raw not in (None, "") else default)
        except (TypeError, ValueError):
            raise DecodeError(f"{keyword} {tag} has the invalid value {raw!r}; fix the header",
                              filename=name) from None
        if value < 1:
            raise DecodeError(f"{keyword} {tag} = {value} is not a positive number; fix the header", filename=name)
        values[keyword] = value
    for keyword, limit, field in (("Rows", limits.max_rows, "max_rows"),
                                  ("Columns", limits.max_columns, "max_columns"),
                                  ("NumberOfFrames", limits.max_frames, "max_frames")):
        if values[keyword] > limit:
            raise LimitExceededError(f"{keyword} = {values[keyword]} exceeds the limit of {limit}; send smaller "
                                     f"images or raise RADINFER_{field.upper()}", filename=name)
    if values["BitsAllocated"] not in (1, 8, 16, 32, 64):
        raise DecodeError(f"BitsAllocated (0028,0100) = {values['BitsAllocated']} is not 1, 8, 16, 32 or 64; "
                          "fix the header", filename=name)
    _check_bits_stored(ds, values["BitsAllocated"], name)
    size = pixel_bytes(values["Rows"], values["Columns"], values["NumberOfFrames"], values["SamplesPerPixel"],
                       values["BitsAllocated"])  # = expected_pixel_bytes(ds), from the values checked above
    if size > limits.max_pixel_bytes_per_instance:
        raise LimitExceededError(
            f"Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated/8 = {size} bytes exceeds the "
            f"per-instance limit of {limits.max_pixel_bytes_per_instance}; send smaller images or raise "
            "RADINFER_MAX_PIXEL_BYTES_PER_INSTANCE",
            filename=name,
        )
    return size


def _check_bits_stored(ds: Dataset, bits_allocated: int, name: str) -> None:
    """BitsStored, when present, must be 1..BitsAllocated: 0 would mask every pixel to 0 on the native path."""
    raw = header_value(ds, "BitsStored")
    if raw in (None, ""):
        return
    try:
        stored = int(raw)
    except (TypeError, ValueError):
        stored = 0
    if not 1 <= stored <= bits_allocated:
        raise DecodeError(f"BitsStored (0028,0101) = {raw!r} is not between 1 and BitsAllocated = {bits_allocated}; "
                          "fix the header", filename=name)


def _check_uids(header: InstanceHeader) -> None:
    """Image instances need SOPClassUID and SOPInstanceUID: results reference every slice by them."""
    for keyword, tag in (("SOPClassUID", "(0008,0016)"), ("SOPInstanceUID", "(0008,0018)")):
        if not str(header_value(header.dataset, keyword, "") or "").strip():
            raise InputRejected(f"{keyword} {tag} is missing; every image instance needs it, re-export the file",
                                filename=header.path.name)


def _check_complete(header: InstanceHeader, stream: BinaryIO, ts: UID, available: int, declared_bytes: int
                    ) -> None:
    """Detect truncated pixel data from sizes alone (native) or by walking fragment headers (encapsulated).

    ``declared_bytes`` is the pixel data size the header declares (``expected_pixel_bytes``).
    """
    pixel, name = header.pixel, header.path.name
    assert pixel is not None
    if pixel.length is not None:
        if pixel.keyword != "PixelData" or ts.is_encapsulated:
            needed = pixel.length
        else:
            needed = declared_bytes
            if str(header_value(header.dataset, "PhotometricInterpretation", "")) == "YBR_FULL_422":
                needed = needed * 2 // 3  # two samples per pixel are stored, chroma is shared by pixel pairs
            if pixel.length < needed:
                raise DecodeError(
                    f"PixelData length {pixel.length} is shorter than Rows x Columns x Frames x SamplesPerPixel x "
                    f"BitsAllocated/8 = {needed} bytes; re-send the complete file",
                    filename=name,
                )
        if available < needed:
            raise DecodeError(f"{pixel.keyword} is truncated: {available} of {needed} bytes present; re-send the "
                              "complete file", filename=name)
        return
    _walk_fragments(stream, available, name)


def _walk_fragments(stream: BinaryIO, available: int, name: str) -> None:
    position = 0
    while position + 8 <= available:
        tag_group, tag_elem, length = struct.unpack("<HHL", stream.read(8))
        tag = tag_group << 16 | tag_elem
        position += 8
        if tag == _SEQ_DELIMITER:
            return
        if tag != _ITEM or length == 0xFFFFFFFF:
            raise DecodeError(f"encapsulated PixelData has an invalid item tag ({tag_group:04X},{tag_elem:04X}); "
                              "re-send the file", filename=name)
        position += length
        if position > available:
            break
        stream.seek(length, io.SEEK_CUR)
    raise DecodeError("encapsulated PixelData is truncated (no sequence delimiter before the end of the file); "
                      "re-send the complete file", filename=name)
