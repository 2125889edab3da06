"""Group header-pass instances into series in a deterministic order."""

from __future__ import annotations

from dicom_io.errors import InputRejected
from dicom_io.rawvalues import header_value
from dicom_io.types import InstanceHeader, Series

_PLACE = ("ImagePositionPatient", "InstanceNumber", "Rows", "Columns", "NumberOfFrames")
"""What must agree for a second file with the same SOPInstanceUID to be the same image sent twice."""


def group_series(instances: list[InstanceHeader]) -> list[Series]:
    """Group by SeriesInstanceUID.

    Series are ordered by (SeriesNumber, SeriesInstanceUID); instances keep arrival order. A second file with the
    same SOPInstanceUID as an earlier one is the same image sent twice and is dropped, unless its place (position,
    instance number, size) differs: then two images share a UID, and the study is refused saying so (dropping one
    would surface later as a misleading "missing slice").
    """
    by_uid: dict[str, Series] = {}
    seen: dict[str, InstanceHeader] = {}
    for header in instances:
        ds = header.dataset
        uid = str(header_value(ds, "SeriesInstanceUID", "") or "")
        sop = str(header_value(ds, "SOPInstanceUID", "") or "")
        if sop and sop in seen:
            _check_same_image(seen[sop], header)
            continue
        seen[sop] = header
        series = by_uid.get(uid)
        if series is None:
            series = by_uid[uid] = Series(
                study_instance_uid=str(header_value(ds, "StudyInstanceUID", "")),
                series_instance_uid=uid,
                modality=str(header_value(ds, "Modality", "") or ""),
            )
        series.instances.append(header)
    return sorted(by_uid.values(), key=_series_key)


def _place(header: InstanceHeader) -> tuple[str, ...]:
    return tuple(str(header_value(header.dataset, keyword, "")) for keyword in _PLACE)


def _check_same_image(first: InstanceHeader, again: InstanceHeader) -> None:
    differing = [k for k, a, b in zip(_PLACE, _place(first), _place(again), strict=True) if a != b]
    if differing:
        raise InputRejected(
            f"{first.path.name} and {again.path.name} share one SOPInstanceUID but are different images "
            f"({', '.join(differing)} differ); every image needs its own SOPInstanceUID: fix the sender"
        )


def _series_key(series: Series) -> tuple[int, str]:
    number = header_value(series.first, "SeriesNumber")
    try:
        value = int(number) if number not in (None, "") else 2**31
    except (TypeError, ValueError):
        value = 2**31
    return value, series.series_instance_uid
