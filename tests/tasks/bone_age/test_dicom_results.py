"""The bone-age DICOM results (SC and SR) as a PACS receives them: written for sources with invalid patient or
study values, the research-use statement, the same UIDs for a re-analysis, series date and study attributes."""

from __future__ import annotations

import pydicom
import pytest

from dicom_io import validate
from dicom_io.limits import Limits
from inference.findings import RESEARCH_USE_DISCLAIMER, SYNTHETIC_TRAINING_DISCLAIMER
from inference.pipeline import analyze

from .conftest import write_phantom

RESULTS = ("bone_age_overlay.dcm", "bone_age_sr.dcm")


def _run(engine, tmp_path, path, name="job"):
    report = analyze([path], engine, limits=Limits(), workdir=tmp_path / name)
    return report, {n: pydicom.dcmread(tmp_path / name / n) for n in RESULTS}


def _sr_texts(sr: pydicom.Dataset) -> list[str]:
    texts = []

    def walk(items):
        for item in items:
            if item.ValueType == "TEXT":
                texts.append(item.TextValue)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return texts


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize(
    ("keyword", "value", "written", "left_out"),
    [("StudyDate", "2024-01-01", "20240101", None), ("PatientBirthDate", "notadate", None, "PatientBirthDate"),
     ("PatientSex", "X", None, "PatientSex"), ("PatientSex", "m", "M", None)],
    ids=["iso-study-date", "birth-date-text", "sex-X", "sex-lower-case"],
)
def test_a_source_with_an_invalid_value_still_gets_its_sc_and_sr(engine, tmp_path, keyword, value, written,
                                                                 left_out):
    path, _ = write_phantom(tmp_path / "hand.dcm", seed=9_400_000, tags={keyword: value})
    report, results = _run(engine, tmp_path, path)
    assert report.summary.get("dicom_attributes_left_out") == left_out  # the keyword only: values are PHI
    for name, result in results.items():
        assert (result[keyword].value or None) == written, name
        if validate.available():
            assert validate.dciodvfy(tmp_path / "job" / name).errors == [], name


def test_results_say_research_use_only_and_synthetic_training(engine, tmp_path):
    path, _ = write_phantom(tmp_path / "hand.dcm", seed=9_400_001)
    _, results = _run(engine, tmp_path, path)
    statement = f"{RESEARCH_USE_DISCLAIMER} {SYNTHETIC_TRAINING_DISCLAIMER}"
    assert statement in _sr_texts(results["bone_age_sr.dcm"])
    assert results["bone_age_overlay.dcm"].ImageComments == statement


def test_a_reanalysis_gives_the_same_uids_and_every_result_a_series_date(engine, tmp_path):
    path, _ = write_phantom(tmp_path / "hand.dcm", seed=9_400_002, tags={"StudyDescription": "Hand links",
                                                                          "IssuerOfPatientID": "HOSP"})
    first, second = (_run(engine, tmp_path, path, name)[1] for name in ("first", "second"))
    source = pydicom.dcmread(path, stop_before_pixels=True)
    for name in RESULTS:
        assert first[name].SOPInstanceUID == second[name].SOPInstanceUID, name
        assert first[name].SeriesInstanceUID == second[name].SeriesInstanceUID, name
        assert first[name].SeriesDate and first[name].SeriesTime, name
        assert first[name].SeriesDescription.startswith("AI bone age"), name
    assert first["bone_age_overlay.dcm"].SeriesInstanceUID != first["bone_age_sr.dcm"].SeriesInstanceUID
    other, _ = write_phantom(tmp_path / "other.dcm", seed=9_400_002)
    assert _run(engine, tmp_path, other, "other")[1]["bone_age_sr.dcm"].SOPInstanceUID != \
        first["bone_age_sr.dcm"].SOPInstanceUID  # another source instance: other results
    sc, sr = first["bone_age_overlay.dcm"], first["bone_age_sr.dcm"]
    for keyword in ("StudyDescription", "IssuerOfPatientID"):
        assert sc[keyword].value == sr[keyword].value == source[keyword].value
    assert sc.BodyPartExamined == "HAND"
