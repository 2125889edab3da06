"""What the DICOM results of one analysis share: UIDs derived from what produced them, and a series date/time."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_io.writers.provenance import MANUFACTURER, ModelProvenance, radinfer_version


@dataclass(frozen=True)
class ResultSet:
    """The results one model derives from ``source_uids`` (SOP Instance UIDs).

    Their Series and SOP Instance UIDs are hashes of the source instances, the model (name, version, weights),
    radinfer's version and the result's role ("seg", "sr", "sc:1" ...): re-sending the same study gives the same
    UIDs, so a PACS keeps one copy of an identical re-analysis instead of another result set each time (which a
    PACS routing rule that sends changed studies back to radinfer would turn into a loop). ``started`` is the
    Series Date/Time of every result series.
    """

    provenance: ModelProvenance
    source_uids: tuple[str, ...]
    started: dt.datetime = field(default_factory=dt.datetime.now)

    @classmethod
    def of(cls, provenance: ModelProvenance, sources: Iterable[Dataset]) -> ResultSet:
        return cls(provenance, tuple(sorted({str(source.SOPInstanceUID) for source in sources})))

    def series_uid(self, role: str) -> str:
        return self._uid("series", role)

    def instance_uid(self, role: str) -> str:
        return self._uid("instance", role)

    def placed(self, series_role: str, instance_role: str | None = None) -> dict[str, Any]:
        """The writer arguments that place one result (``secondary_capture``, ``binary_segmentation``,
        ``measurement_report``): provenance, series and instance UIDs (``instance_role`` defaults to the series
        role), and the series date/time."""
        return {
            "provenance": self.provenance,
            "series_instance_uid": self.series_uid(series_role),
            "sop_instance_uid": self.instance_uid(instance_role or series_role),
            "series_datetime": self.started,
        }

    def _uid(self, level: str, role: str) -> str:
        model = self.provenance
        return derived_uid(MANUFACTURER, radinfer_version(), model.name, model.version, model.weights_sha256, level,
                           role, *self.source_uids)


def derived_uid(*parts: str) -> str:
    """A UID that is a hash of ``parts``: what is derived from the same things gets the same UID."""
    return generate_uid(entropy_srcs=list(parts))


def series_date_time(started: dt.datetime | None) -> dict[str, Any]:
    """highdicom's ``series_date``/``series_time`` arguments: when the series started (now when not given).
    A series-level value, so every instance of a series must get the same one."""
    started = started or dt.datetime.now()
    return {"series_date": started.date(), "series_time": started.time()}
