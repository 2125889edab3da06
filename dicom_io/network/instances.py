"""An instance received over the network (STOW-RS part or C-STORE), already written to disk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom.filereader

from dicom_io.errors import DicomIOError, InputRejected
from dicom_io.limits import Limits
from dicom_io.reader import read_header
from dicom_io.types import SkippedInstance


@dataclass(frozen=True)
class ReceivedInstance:
    """A complete DICOM Part 10 file at ``path`` and the identifiers read from it (UIDs only, no PHI).

    ``source`` is ``"stow-rs"`` or the calling AE title of a DIMSE association.
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    source: str


# Takes ownership of the file (moves it somewhere durable) or raises; called once per received instance.
AcceptInstance = Callable[[ReceivedInstance], None]


class InstanceFailure(Exception):
    """An instance that cannot be kept: ``status`` is the DIMSE/STOW failure reason, ``detail`` one sentence."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# Failure Reason (0008,1197) / C-STORE status values (PS3.4 B.2.3, PS3.18 10.5.3).
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900  # also used for "instance not in the study named by the request URL"
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


def check_instance(path: Path, limits: Limits, source: str, *, study_uid: str | None = None) -> ReceivedInstance:
    """Header pass (limits, completeness) over one received file; InstanceFailure when it cannot be kept."""
    try:
        header = read_header(path, limits)
    except InputRejected as exc:
        raise InstanceFailure(CANNOT_UNDERSTAND, exc.detail) from None
    except DicomIOError as exc:
        raise InstanceFailure(CANNOT_UNDERSTAND, str(exc)) from None
    if isinstance(header, SkippedInstance):
        raise InstanceFailure(CANNOT_UNDERSTAND, header.reason)
    ds = header.dataset
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if not ds.get(k)]
    if missing:
        raise InstanceFailure(CANNOT_UNDERSTAND, f"{', '.join(missing)} missing or empty; send complete instances")
    if study_uid is not None and str(ds.StudyInstanceUID) != study_uid:
        raise InstanceFailure(
            DATASET_DOES_NOT_MATCH,
            "its StudyInstanceUID differs from the study in the request URL; post it to /studies or its own study",
        )
    meta = pydicom.filereader.read_file_meta_info(path)
    return ReceivedInstance(
        path=path,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(meta.get("TransferSyntaxUID", "")),
        source=source,
    )
