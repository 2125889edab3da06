"""Source datasets as highdicom's constructors read them.

highdicom's SC, SEG and SR constructors take the Patient and General Study attributes of a result from one source
image: they read the Type 2 ones by attribute access (an absent one raises AttributeError) and parse PatientSex,
PatientBirthDate, StudyDate and StudyTime (an invalid one raises ValueError), and SEG and SR then copy every
Patient and Study attribute as it is. Real archives hold absent values, ISO dates ("2024-01-01") and sex codes
such as "X" or "m". The results must still be written, with valid attributes only: ``result_source`` gives the
source with every such attribute checked against its VR (pydicom's validators), normalised where the intent is
unambiguous ("m" -> "M", "2024-01-01" -> "20240101") and otherwise left out: empty when the result needs it
(Type 2), absent when not. ``left_out_attributes`` names the ones left out, by keyword (their values are PHI).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydicom import config
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, TM, validate_value

# Patient and General Study module attributes (Type 2) that highdicom reads from the source unguarded.
TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
# The study-level attributes a result copies besides group 0010 (Patient and Patient Study modules).
STUDY_KEYWORDS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "AdmittingDiagnosesDescription",
)
PATIENT_GROUP = 0x0010
PATIENT_SEXES = ("M", "F", "O")
_ABSENT = object()


def valid_value(keyword: str, vr: str, value: Any) -> Any:
    """``value`` as a result may carry it: itself when valid for ``vr``, normalised when its intent is
    unambiguous; raises ValueError when it is not valid (the message names no value)."""
    if value in (None, "") or vr == "SQ":
        return value
    if keyword == "PatientSex":
        sex = str(value).strip().upper()
        if sex not in PATIENT_SEXES:
            raise ValueError(f"{keyword} is not one of {', '.join(PATIENT_SEXES)}")
        return sex
    if vr == "DA":
        return _date(str(value).strip())
    if vr == "TM":
        return _time(str(value).strip())
    for item in value if isinstance(value, MultiValue) else [value]:
        try:
            validate_value(vr, item, config.RAISE)
        except ValueError:
            raise ValueError(f"{keyword} is not a valid {vr} value") from None
    return value


def _date(text: str) -> str:
    """A DA value; an ISO 8601 date ("2024-01-01") becomes "20240101"."""
    try:
        validate_value("DA", text, config.RAISE)
        DA(text)  # the VR's pattern passes 20240231, the calendar does not
        return text
    except ValueError:
        pass
    try:
        return dt.date.fromisoformat(text).strftime("%Y%m%d")
    except ValueError:
        raise ValueError("not a valid DA value") from None


def _time(text: str) -> str:
    """A TM value; an ISO 8601 time ("12:30:00") becomes "123000"."""
    try:
        validate_value("TM", text, config.RAISE)
        TM(text)
        return text
    except ValueError:
        pass
    try:
        time = dt.time.fromisoformat(text)
    except ValueError:
        raise ValueError("not a valid TM value") from None
    return time.strftime("%H%M%S") + (f".{time.microsecond:06d}" if time.microsecond else "")


def _checked_keywords(source: Dataset) -> list[str]:
    tags = source.keys()  # not the elements: iterating a Dataset converts each raw element
    patient = [keyword_for_tag(tag) for tag in tags if tag.group == PATIENT_GROUP and tag.element]
    return [*filter(None, patient), *(keyword for keyword in STUDY_KEYWORDS if keyword in source)]


def _review(source: Dataset) -> tuple[dict[str, Any], list[str]]:
    """The changes the source's Patient and Study attributes need (keyword -> value, or ``_ABSENT``) and the
    keywords of those left out."""
    changes: dict[str, Any] = {keyword: None for keyword in TYPE2_COPIED if keyword not in source}
    left_out = []
    for keyword in _checked_keywords(source):
        element = source[keyword]
        try:
            value = valid_value(keyword, element.VR, element.value)
        except ValueError:
            changes[keyword] = None if keyword in TYPE2_COPIED else _ABSENT
            left_out.append(keyword)
            continue
        if value != element.value:
            changes[keyword] = value
    return changes, left_out


def result_source(source: Dataset) -> Dataset:
    """``source`` itself when its Patient and Study attributes are all present (Type 2) and valid, else a copy
    (the source is not changed) where absent and invalid ones are empty or absent and the others normalised."""
    changes, _ = _review(source)
    if not changes:
        return source
    copy = Dataset()
    copy.update(source)
    if hasattr(source, "file_meta"):
        copy.file_meta = source.file_meta
    for keyword, value in changes.items():
        if keyword in copy:
            del copy[keyword]  # a new element: the copy shares the source's elements, setting one would change both
        if value is not _ABSENT:
            setattr(copy, keyword, value)
    return copy


def left_out_attributes(source: Dataset) -> list[str]:
    """Keywords of the source's Patient and Study attributes whose values are not valid and that the results
    therefore leave out (empty or absent)."""
    return _review(source)[1]
