"""Greulich & Pyle (Brush Foundation) bone-age reference, chronological age from DICOM, Z-scores and category.

The table gives, per sex and chronological age, the mean skeletal (bone) age and its standard deviation in
months. Between tabulated ages the mean and SD are interpolated linearly; outside the tabulated range nothing
is extrapolated and the comparison is ``indeterminate``.

Two Z-scores are reported, with their convention named:

- ``z_vs_chronological_age`` = (BA - CA) / SD(CA): how far the bone age is from the child's own age, in Brush
  SDs for that age. The category (delayed / normal / advanced) uses this one at -2 / +2.
- ``z_vs_brush_mean`` = (BA - Brush mean(CA)) / SD(CA): how far the bone age is from the Brush Foundation
  mean bone age of children of that chronological age.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import numpy as np

# Chronological ages (months) of the table rows: 3, 6, 9 months, 1, 1.5, ..., 5, 6, ..., 17 years.
_AGES_MONTHS = (3.0, 6.0, 9.0, 12.0, 18.0, 24.0, 30.0, 36.0, 42.0, 48.0, 54.0, 60.0,
                72.0, 84.0, 96.0, 108.0, 120.0, 132.0, 144.0, 156.0, 168.0, 180.0, 192.0, 204.0)

BRUSH_TABLE: dict[str, dict[str, tuple[float, ...]]] = {
    "M": {
        "ages": _AGES_MONTHS,
        "mean": (3.01, 6.09, 9.56, 12.74, 19.36, 25.97, 32.40, 38.21, 43.89, 49.04, 56.00, 62.43,
                 75.46, 88.20, 101.38, 113.90, 125.68, 137.32, 148.82, 158.39, 170.02, 182.72, 195.32, 206.21),
        "sd": (0.69, 1.13, 1.43, 1.97, 3.52, 3.92, 4.52, 5.08, 5.40, 6.66, 8.36, 8.79,
               9.17, 8.91, 9.10, 9.00, 9.79, 10.09, 10.38, 10.44, 10.72, 11.32, 12.86, 13.05),
    },
    "F": {
        "ages": _AGES_MONTHS[:-1],  # girls end at 16 years
        "mean": (3.02, 6.04, 9.05, 12.04, 18.22, 24.16, 30.96, 36.63, 43.50, 50.14, 60.06, 66.21,
                 78.50, 89.30, 100.66, 113.86, 125.66, 137.86, 149.62, 162.28, 174.25, 183.62, 189.44),
        "sd": (0.72, 1.16, 1.36, 1.77, 3.49, 4.64, 5.37, 5.97, 7.48, 8.98, 10.73, 11.65,
               10.23, 9.64, 10.23, 10.74, 11.73, 11.94, 10.24, 10.67, 11.30, 9.23, 7.31),
    },
}

CATEGORY_THRESHOLD_SD = 2.0
Z_CONVENTION_CA = "(BA - CA) / SD, SD of the Greulich & Pyle Brush Foundation table at the chronological age"
Z_CONVENTION_BRUSH = "(BA - Brush mean) / SD, Brush Foundation mean and SD at the chronological age"
_DAYS_PER_MONTH = 365.2425 / 12.0


@dataclass(frozen=True)
class BrushReference:
    """Brush Foundation mean bone age and SD (months) at one chronological age."""

    mean_months: float
    sd_months: float


@dataclass(frozen=True)
class BoneAgeAssessment:
    """Bone age compared with the reference; Z-scores and category are None / ``indeterminate`` when the
    chronological age lies outside the table (or is unknown, or sex is unknown)."""

    reference: BrushReference | None
    z_vs_chronological_age: float | None
    z_vs_brush_mean: float | None
    category: str  # "delayed", "normal", "advanced" or "indeterminate"
    reason: str | None = None  # why the category is indeterminate


def table_range_months(sex: str) -> tuple[float, float]:
    ages = BRUSH_TABLE[sex]["ages"]
    return ages[0], ages[-1]


def brush_reference(sex: str, chronological_age_months: float) -> BrushReference | None:
    """Mean and SD interpolated linearly at ``chronological_age_months``; None outside the table range."""
    if sex not in BRUSH_TABLE:
        raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    table = BRUSH_TABLE[sex]
    low, high = table_range_months(sex)
    if not low <= chronological_age_months <= high:
        return None
    mean = float(np.interp(chronological_age_months, table["ages"], table["mean"]))
    sd = float(np.interp(chronological_age_months, table["ages"], table["sd"]))
    return BrushReference(mean, sd)


def assess(sex: str | None, chronological_age_months: float | None, bone_age_months: float) -> BoneAgeAssessment:
    """Z-scores (both conventions) and the category at +/-2 SD of Z = (BA - CA) / SD."""
    if sex not in BRUSH_TABLE:
        return BoneAgeAssessment(None, None, None, "indeterminate",
                                 "sex is unknown, and the Greulich & Pyle reference is sex-specific")
    if chronological_age_months is None:
        return BoneAgeAssessment(None, None, None, "indeterminate", "chronological age is unknown")
    reference = brush_reference(sex, chronological_age_months)
    if reference is None:
        low, high = table_range_months(sex)
        return BoneAgeAssessment(
            None, None, None, "indeterminate",
            f"chronological age {chronological_age_months:.1f} months is outside the Greulich & Pyle (Brush) "
            f"table for {'boys' if sex == 'M' else 'girls'} ({low:.0f}-{high:.0f} months); not extrapolated")
    z_ca = (bone_age_months - chronological_age_months) / reference.sd_months
    z_brush = (bone_age_months - reference.mean_months) / reference.sd_months
    if z_ca < -CATEGORY_THRESHOLD_SD:
        category = "delayed"
    elif z_ca > CATEGORY_THRESHOLD_SD:
        category = "advanced"
    else:
        category = "normal"
    return BoneAgeAssessment(reference, z_ca, z_brush, category)


def years_months(months: float) -> str:
    """``125.4`` -> ``'10 years 5 months'`` (months rounded to the nearest whole month)."""
    total = round(months)
    years, rest = divmod(total, 12)
    return f"{years} year{'s' if years != 1 else ''} {rest} month{'s' if rest != 1 else ''}"


def _dicom_date(value: object) -> dt.date | None:
    text = str(value or "").strip()
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def parse_patient_age(value: object) -> float | None:
    """PatientAge (AS: nnnD, nnnW, nnnM or nnnY) in months; None when absent or malformed."""
    match = re.fullmatch(r"(\d{3})([DWMY])", str(value or "").strip().upper())
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2)
    return {"D": number / _DAYS_PER_MONTH, "W": number * 7 / _DAYS_PER_MONTH, "M": float(number),
            "Y": number * 12.0}[unit]


@dataclass(frozen=True)
class ChronologicalAge:
    months: float | None
    source: str  # "PatientBirthDate/StudyDate", "PatientAge" or "unknown"
    reason: str | None = None  # why it is unknown


def chronological_age(dataset) -> ChronologicalAge:
    """Age in months from PatientBirthDate and StudyDate (else AcquisitionDate/ContentDate), else PatientAge."""
    birth = _dicom_date(dataset.get("PatientBirthDate"))
    study = next((d for d in (_dicom_date(dataset.get(k)) for k in ("StudyDate", "AcquisitionDate",
                                                                      "ContentDate")) if d), None)
    if birth is not None and study is not None:
        if study < birth:
            return ChronologicalAge(None, "unknown", "StudyDate (0008,0020) is before PatientBirthDate "
                                                     "(0010,0030); correct the dates")
        return ChronologicalAge((study - birth).days / _DAYS_PER_MONTH, "PatientBirthDate/StudyDate")
    months = parse_patient_age(dataset.get("PatientAge"))
    if months is not None:
        return ChronologicalAge(months, "PatientAge")
    missing = "PatientBirthDate (0010,0030)" if birth is None else "StudyDate (0008,0020)"
    return ChronologicalAge(None, "unknown", f"{missing} is missing or malformed and PatientAge (0010,1010) is "
                                             "absent; send the birth and study dates or PatientAge")
