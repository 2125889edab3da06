"""Header scan for the common case, without pydicom's per-element file reads.

``scan_dataset`` reads the top level of a little-endian dataset (explicit or implicit VR) from a buffer with
``struct.unpack_from`` and builds the same Dataset that ``pydicom.filereader.read_dataset`` would: the same
RawDataElements (tag, VR, length, value bytes, value offset, encoding), the same character set and original
encoding, values left unconverted. It stops at the first pixel data tag and leaves the stream there.

It answers None, having moved nothing, for anything outside that common case, so that the caller runs pydicom's
reader (whose errors and warnings then describe the problem): big endian, a first element whose VR encoding
contradicts the transfer syntax, a VR that is not a standard one, tags out of order, repeated or in group 0000, an
item or delimiter tag at the top level, an element running past the end of the data, trailing bytes shorter than
an element header, or a header larger than ``MAX_SCAN_BYTES``. Sequences of defined length stay raw bytes,
converted by pydicom when first accessed; an element of undefined length (a sequence, as many scanners write them)
is handed to pydicom's own element generator over the same bytes at the same offsets, as ``read_dataset`` would.
"""

from __future__ import annotations

import io
from struct import Struct
from typing import BinaryIO

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR
from pydicom.values import convert_string

__all__ = ["MAX_SCAN_BYTES", "scan_dataset", "shared_tag"]

FIRST_READ_BYTES = 16 << 10
"""First read: a CT or radiograph header fits; the buffer grows x4 when the scan runs past it."""
MAX_SCAN_BYTES = 16 << 20
"""Headers (or pixel-less files) larger than this are left to pydicom's reader."""

_EXPLICIT = Struct("<HH2sH").unpack_from
_IMPLICIT = Struct("<HHL").unpack_from
_LENGTH32 = Struct("<L").unpack_from
_VRS = {str(vr.value).encode("ascii"): str(vr.value) for vr in STANDARD_VR}
_LONG = {str(vr.value) for vr in EXPLICIT_VR_LENGTH_32}
_UNDEFINED = 0xFFFFFFFF
_CHARSET = 0x00080005
_MAX_SHARED_TAGS = 1 << 14
_shared_tags: dict[int, BaseTag] = {}


class _NeedMore(Exception):
    """The scan ran past the buffer before the stop tag or the end of the data; ``args[0]``: read it all."""


def scan_dataset(stream: BinaryIO, *, implicit: bool, stop_tags: set[int] | frozenset[int]) -> Dataset | None:
    """The dataset from the stream's position up to the first tag in ``stop_tags`` (None: use pydicom).

    On success the stream is left at the start of the stop element (or at the end of the data).
    """
    base = stream.tell()
    buf = stream.read(FIRST_READ_BYTES)
    at_end = len(buf) < FIRST_READ_BYTES
    while True:
        try:
            found = _scan(buf, base, implicit, stop_tags, at_end)
        except _NeedMore as need:
            if len(buf) >= MAX_SCAN_BYTES:
                found = None
            else:
                want = MAX_SCAN_BYTES - len(buf) if need.args[0] else min(3 * len(buf), MAX_SCAN_BYTES - len(buf))
                more = stream.read(want)
                buf += more
                at_end = len(more) < want
                continue
        if found is None:
            stream.seek(base)
            return None
        elements, stop = found
        stream.seek(base + stop)
        return _dataset(elements, implicit)


def shared_tag(tag: int) -> BaseTag:
    """The BaseTag for ``tag``, one object per tag for all files: tags are immutable, and a header pass then
    allocates (and the garbage collector tracks) one object less per element. At most ``_MAX_SHARED_TAGS`` are
    kept, so that files full of random tags cannot grow the table without bound."""
    shared = _shared_tags.get(tag)
    if shared is None:
        shared = BaseTag(tag)
        if len(_shared_tags) < _MAX_SHARED_TAGS:
            _shared_tags[tag] = shared
    return shared


def _scan(buf: bytes, base: int, implicit: bool, stop_tags: set[int] | frozenset[int], complete: bool
          ) -> tuple[dict[BaseTag, RawDataElement | DataElement], int] | None:
    """Top-level elements of ``buf`` and the offset where the scan stopped; None outside the common case.

    Raises _NeedMore when ``buf`` ends before the stop tag and is not the complete data.
    """
    end = len(buf)
    pos = 0
    last = -1
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    if end >= 6 and (0x40 < buf[4] < 0x5B and 0x40 < buf[5] < 0x5B) == implicit:
        return None  # the first element's VR encoding contradicts the transfer syntax
    while pos < end:
        if pos + 8 > end:
            if complete:
                return None  # trailing bytes shorter than an element header
            raise _NeedMore(False)
        if implicit:
            group, elem, length = _IMPLICIT(buf, pos)
            vr = None
            value_at = pos + 8
        else:
            group, elem, raw_vr, length = _EXPLICIT(buf, pos)
            vr = _VRS.get(raw_vr)
            if vr is None:
                return None
            value_at = pos + 8
            if vr in _LONG:
                if value_at + 4 > end:
                    if complete:
                        return None
                    raise _NeedMore(False)
                (length,) = _LENGTH32(buf, value_at)
                value_at += 4
        tag = group << 16 | elem
        if tag <= last or group == 0 or group == 0xFFFE:
            return None
        if tag in stop_tags:
            return elements, pos
        if length == _UNDEFINED:
            if not complete:
                raise _NeedMore(True)  # its end is only known by parsing it: parse it with all the data at hand
            parsed = _undefined_length_element(buf, base, pos, implicit, elements)
            if parsed is None:
                return None
            elements[parsed[0].tag] = parsed[0]
            last, pos = tag, parsed[1]
            continue
        if value_at + length > end:
            if complete:
                return None
            raise _NeedMore(False)
        value = buf[value_at:value_at + length] if length else empty_value_for_VR(vr, raw=True)
        key = shared_tag(tag)
        elements[key] = RawDataElement(key, vr, length, value, base + value_at, implicit, True)
        last = tag
        pos = value_at + length
    return elements, pos


def _undefined_length_element(buf: bytes, base: int, pos: int, implicit: bool,
                               elements: dict[BaseTag, RawDataElement | DataElement]
                               ) -> tuple[RawDataElement | DataElement, int] | None:
    """The element of undefined length at ``pos`` (a sequence, or UN read as one) as pydicom's own element
    generator yields it inside ``read_dataset``: same bytes at the same file offsets, same character set. Returns
    it with the offset after it, or None (use pydicom's reader, which then reports or warns the same way)."""
    charset = elements.get(BaseTag(_CHARSET))
    encoding = convert_encodings(convert_string(charset.value or b"", True)) if charset else default_encoding
    stream = io.BytesIO(bytes(base) + buf)  # padded so that offsets are file offsets, as in the full path
    stream.seek(base + pos)
    try:
        element = next(data_element_generator(stream, implicit, True, encoding=encoding))
    except Exception:  # noqa: BLE001 - pydicom raises many types on malformed sequences; the full path reports them
        return None
    return element, stream.tell() - base


def _dataset(elements: dict[BaseTag, RawDataElement | DataElement], implicit: bool) -> Dataset:
    """The Dataset and original encoding exactly as ``pydicom.filereader.read_dataset`` sets them."""
    ds = Dataset(elements, parent_encoding=default_encoding)
    charset = elements.get(BaseTag(_CHARSET))
    encoding = convert_encodings(convert_raw_data_element(charset).value) if charset else default_encoding
    ds.set_original_encoding(implicit, True, encoding)
    return ds
