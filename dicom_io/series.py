"""Group header-pass instances into series in a deterministic order."""

from __future__ import annotations

from dicom_io.rawvalues import header_value
from dicom_io.types import InstanceHeader, Series


def group_series(instances: list[InstanceHeader]) -> list[Series]:
    """Group by SeriesInstanceUID.

    Series are ordered by (SeriesNumber, SeriesInstanceUID); instances keep arrival order. A second file with the
    same SOPInstanceUID as an earlier one in the series is the same image sent twice and is dropped.
    """
    by_uid: dict[str, Series] = {}
    seen: set[str] = set()
    for header in instances:
        ds = header.dataset
        uid = str(header_value(ds, "SeriesInstanceUID", "") or "")
        sop = str(header_value(ds, "SOPInstanceUID", "") or "")
        if sop and sop in seen:
            continue
        seen.add(sop)
        series = by_uid.get(uid)
        if series is None:
            series = by_uid[uid] = Series(
                study_instance_uid=str(header_value(ds, "StudyInstanceUID", "")),
                series_instance_uid=uid,
                modality=str(header_value(ds, "Modality", "") or ""),
            )
        series.instances.append(header)
    return sorted(by_uid.values(), key=_series_key)


def _series_key(series: Series) -> tuple[int, str]:
    number = header_value(series.first, "SeriesNumber")
    try:
        value = int(number) if number not in (None, "") else 2**31
    except (TypeError, ValueError):
        value = 2**31
    return value, series.series_instance_uid
