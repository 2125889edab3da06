"""Header values read straight from the raw element bytes, equal to what ``Dataset.get`` returns.

The header pass, the series grouper and the volume builder read about 25 top-level values per file. Asking the
Dataset converts each element into a DataElement first (hooks, UID and DS objects, validation, MultiValue), which
was most of a CT load. ``header_value`` parses an element that is still raw and cleanly encoded itself: US with
one value; IS, DS, UI and CS that match pydicom's validation patterns and lengths (so no warning pydicom would
give is skipped), with the number of values the dictionary fixes. The answer equals pydicom's: int for US and IS,
float (or a list of floats) for DS, str for UI and CS. Anything else (an element already converted, a VR other
than the dictionary's, an empty value, leading blanks, another number of values, a value out of range or not
finite) is answered by ``ds.get``, with pydicom's own conversion, warnings and errors. A value parsed here leaves
the Dataset as it was (still raw), so edits made to a dataset later are always seen.

``conversion_cannot_fail`` names the binary elements whose conversion cannot raise, which the header pass then
leaves lazy instead of converting them only to see them succeed.
"""

from __future__ import annotations

import math
import re
from functools import cache
from typing import Any

from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

__all__ = ["conversion_cannot_fail", "has_element", "header_value", "required_value"]

_NOT_PARSED = object()
_ABSENT = object()
_IS = re.compile(rb"[+-]?[0-9]+")
_DS = re.compile(rb"[+-]?([0-9]+|[0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_UI = re.compile(rb"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_CS = re.compile(rb"[A-Z0-9_]+")
_MAX_IS, _MAX_DS, _MAX_UI, _MAX_CS = 12, 16, 64, 16
_NUMBER_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8}
_BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})


@cache
def _spec(keyword: str) -> tuple[BaseTag, str, int]:
    """Tag, dictionary VR and fixed value multiplicity (0 when the dictionary allows a range) of ``keyword``."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword} is not a DICOM keyword")
    vm = dictionary_VM(tag)
    return BaseTag(tag), dictionary_VR(tag), int(vm) if vm.isdigit() else 0


def header_value(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword, default)`` for a top-level element, parsed from its raw bytes when they are clean."""
    tag, vr, vm = _spec(keyword)
    elem = ds.get_item(tag)
    if elem is None:
        return default
    if isinstance(elem, RawDataElement) and (elem.VR is None or elem.VR == vr) and isinstance(elem.value, bytes):
        value = _parse(elem.value, vr, vm, elem.is_little_endian)
        if value is not _NOT_PARSED:
            return value
    return ds.get(keyword, default)


def has_element(ds: Dataset, keyword: str) -> bool:
    """``keyword in ds``, without the keyword's dictionary look-up on every call."""
    return _spec(keyword)[0] in ds


def required_value(ds: Dataset, keyword: str) -> Any:
    """``getattr(ds, keyword)``, raising AttributeError when absent, read like ``header_value``."""
    value = header_value(ds, keyword, _ABSENT)
    return getattr(ds, keyword) if value is _ABSENT else value


def _parse(data: bytes, vr: str, vm: int, little: bool) -> Any:
    if vr == "US":
        return data[0] | data[1] << 8 if little and vm == 1 and len(data) == 2 else _NOT_PARSED
    if vr == "UI":
        text = data.rstrip(b"\x00 ")
        return text.decode("ascii") if len(text) <= _MAX_UI and _UI.fullmatch(text) else _NOT_PARSED
    if vr == "CS":
        text = data.rstrip(b"\x00 ")
        return text.decode("ascii") if vm == 1 and len(text) <= _MAX_CS and _CS.fullmatch(text) else _NOT_PARSED
    if vr == "IS":
        text = data.rstrip(b" ")
        if vm != 1 or len(text) > _MAX_IS or not _IS.fullmatch(text):
            return _NOT_PARSED
        number = int(text)
        return number if -(2**31) <= number < 2**31 else _NOT_PARSED
    if vr == "DS" and vm:
        parts = data.rstrip(b" ").split(b"\\")
        if len(parts) != vm or any(len(part) > _MAX_DS or not _DS.fullmatch(part) for part in parts):
            return _NOT_PARSED
        numbers = [float(part) for part in parts]
        if not all(map(math.isfinite, numbers)):
            return _NOT_PARSED
        return numbers[0] if vm == 1 else numbers
    return _NOT_PARSED


def conversion_cannot_fail(vr: str | None, value: object) -> bool:
    """Whether pydicom converts a raw element of this (explicit or dictionary) VR and value without error.

    Fixed-size numbers whose byte count is a whole number of values, and the byte VRs (OB, OW...: kept as bytes).
    """
    if vr in _BYTES_VRS:
        return True
    size = _NUMBER_SIZES.get(vr) if vr is not None else None
    return size is not None and isinstance(value, bytes) and len(value) % size == 0
