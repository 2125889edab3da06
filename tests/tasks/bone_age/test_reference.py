"""Greulich & Pyle (Brush) reference arithmetic, chronological age from DICOM dates, years/months text."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from inference.tasks.bone_age_reference import (
    BRUSH_TABLE,
    assess,
    brush_reference,
    chronological_age,
    parse_patient_age,
    years_months,
)


def test_brush_table_has_24_boy_and_23_girl_rows_with_matching_lengths():
    for sex, rows in (("M", 24), ("F", 23)):
        table = BRUSH_TABLE[sex]
        assert len(table["ages"]) == len(table["mean"]) == len(table["sd"]) == rows
    assert BRUSH_TABLE["M"]["ages"][-1] == 204.0 and BRUSH_TABLE["F"]["ages"][-1] == 192.0


def test_assess_hand_worked_boy_120_months_bone_age_132_is_normal():
    result = assess("M", 120.0, 132.0)
    assert result.reference.sd_months == pytest.approx(9.79)
    assert result.reference.mean_months == pytest.approx(125.68)
    assert round(result.z_vs_chronological_age, 2) == 1.23
    assert round(result.z_vs_brush_mean, 2) == 0.65
    assert result.category == "normal"


def test_assess_girl_8_years_bone_age_6_years_is_delayed():
    # Girls at 96 months: mean 100.66, SD 10.23. (72 - 96) / 10.23 = -2.35; (72 - 100.66) / 10.23 = -2.80.
    result = assess("F", 96.0, 72.0)
    assert round(result.z_vs_chronological_age, 2) == -2.35
    assert round(result.z_vs_brush_mean, 2) == -2.80
    assert result.category == "delayed"


@pytest.mark.parametrize(
    ("bone_age", "category"),
    [(120.0 + 2 * 9.79 - 0.01, "normal"), (120.0 + 2 * 9.79, "normal"), (120.0 + 2 * 9.79 + 0.01, "advanced"),
     (120.0 - 2 * 9.79 + 0.01, "normal"), (120.0 - 2 * 9.79 - 0.01, "delayed")],
    ids=["just-below-plus-2sd", "exactly-plus-2sd", "just-above-plus-2sd", "just-above-minus-2sd",
         "just-below-minus-2sd"],
)
def test_assess_category_boundary_at_two_sd_of_z_vs_chronological_age(bone_age, category):
    assert assess("M", 120.0, bone_age).category == category


def test_brush_reference_interpolates_linearly_between_rows():
    # Boys 10 y (120: 125.68 / 9.79) and 11 y (132: 137.32 / 10.09); 126 months is halfway.
    ref = brush_reference("M", 126.0)
    assert ref.mean_months == pytest.approx((125.68 + 137.32) / 2)
    assert ref.sd_months == pytest.approx((9.79 + 10.09) / 2)
    # Girls 4.5 y (54: 60.06 / 10.73) to 5 y (60: 66.21 / 11.65), a quarter of the way.
    ref = brush_reference("F", 55.5)
    assert ref.mean_months == pytest.approx(60.06 + 0.25 * (66.21 - 60.06))
    assert ref.sd_months == pytest.approx(10.73 + 0.25 * (11.65 - 10.73))


@pytest.mark.parametrize(
    ("sex", "age"),
    [("M", 2.9), ("M", 204.5), ("F", 192.5), ("F", 200.0)],
    ids=["boy-under-3-months", "boy-over-17-years", "girl-over-16-years", "girl-at-boys-last-row"],
)
def test_assess_outside_table_is_indeterminate_never_extrapolated(sex, age):
    assert brush_reference(sex, age) is None
    result = assess(sex, age, age)
    assert result.category == "indeterminate"
    assert result.z_vs_chronological_age is None and result.z_vs_brush_mean is None
    assert "outside" in result.reason


def test_assess_table_ends_are_inclusive():
    assert brush_reference("M", 204.0).mean_months == pytest.approx(206.21)
    assert brush_reference("F", 192.0).sd_months == pytest.approx(7.31)
    assert brush_reference("F", 3.0).mean_months == pytest.approx(3.02)


@pytest.mark.parametrize(("sex", "age"), [(None, 120.0), ("M", None)], ids=["unknown-sex", "unknown-age"])
def test_assess_unknown_sex_or_age_is_indeterminate_with_reason(sex, age):
    result = assess(sex, age, 120.0)
    assert result.category == "indeterminate" and result.reason


@pytest.mark.parametrize(
    ("value", "months"),
    [("010Y", 120.0), ("120M", 120.0), ("006W", 42 / (365.2425 / 12)), ("030D", 30 / (365.2425 / 12))],
    ids=["years", "months", "weeks", "days"],
)
def test_parse_patient_age_units(value, months):
    assert parse_patient_age(value) == pytest.approx(months)


@pytest.mark.parametrize("value", ["", "10Y", "010X", None, "abcY"], ids=["empty", "two-digits", "bad-unit",
                                                                          "none", "letters"])
def test_parse_patient_age_malformed_is_none(value):
    assert parse_patient_age(value) is None


def _ds(**tags) -> Dataset:
    ds = Dataset()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def test_chronological_age_from_birth_and_study_dates_beats_patient_age():
    age = chronological_age(_ds(PatientBirthDate="20100115", StudyDate="20200115", PatientAge="003Y"))
    assert age.source == "PatientBirthDate/StudyDate"
    assert age.months == pytest.approx(120.0, abs=0.05)


def test_chronological_age_falls_back_to_patient_age_without_birth_date():
    age = chronological_age(_ds(StudyDate="20200115", PatientAge="120M"))
    assert (age.months, age.source) == (120.0, "PatientAge")


def test_chronological_age_unknown_names_the_missing_tag():
    age = chronological_age(_ds(StudyDate="20200115"))
    assert age.months is None and "PatientBirthDate" in age.reason


def test_chronological_age_study_before_birth_is_unknown():
    age = chronological_age(_ds(PatientBirthDate="20200115", StudyDate="20100115"))
    assert age.months is None and "before" in age.reason


@pytest.mark.parametrize(("months", "text"), [(132.0, "11 years 0 months"), (125.4, "10 years 5 months"),
                                              (13.0, "1 year 1 month"), (11.6, "1 year 0 months")],
                         ids=["whole-years", "rounded-down", "singulars", "rounds-up-to-a-year"])
def test_years_months_text(months, text):
    assert years_months(months) == text
