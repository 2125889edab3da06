"""The mammography DICOM results (heat-map SCs and SR) as a PACS receives them: written for sources with invalid
patient or study values, one description per side's heat-map series, the research-use statement, and the same
UIDs for a re-analysis."""

from __future__ import annotations

import pydicom
import pytest

from dicom_io import validate
from dicom_io.limits import Limits
from inference.findings import RESEARCH_USE_DISCLAIMER, SYNTHETIC_TRAINING_DISCLAIMER
from inference.pipeline import analyze

from .conftest import VIEWS, write_mammo_study

STATEMENT = f"{RESEARCH_USE_DISCLAIMER} {SYNTHETIC_TRAINING_DISCLAIMER}"


def _run(engine, paths, workdir):
    report = analyze(paths, engine, limits=Limits(), workdir=workdir)
    return report, {a.name: pydicom.dcmread(workdir / a.name) for a in report.artifacts
                    if a.media_type == "application/dicom"}


@pytest.fixture(scope="module")
def invalid_study(tmp_path_factory):
    """The four views with an ISO StudyDate and PatientSex X."""
    with pytest.warns(UserWarning):  # pydicom warns about the ISO date as the views are written
        return write_mammo_study(tmp_path_factory.mktemp("study"), seed=5,
                                 tags={n: {"StudyDate": "2024-01-01", "PatientSex": "X"} for n in range(len(VIEWS))})


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_invalid_source_values_still_give_heat_maps_and_sr_that_validate(flag_all_engine, invalid_study, tmp_path):
    report, dicom = _run(flag_all_engine, invalid_study, tmp_path / "job")
    assert len(dicom) == 5 and "mammography_sr.dcm" in dicom  # four heat maps and the SR
    assert report.summary["dicom_attributes_left_out"] == "PatientSex"
    for name, result in dicom.items():
        assert (result.StudyDate, result.PatientSex) == ("20240101", ""), name
        if validate.available():
            assert validate.dciodvfy(tmp_path / "job" / name).errors == [], name


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_one_heat_map_series_per_side_with_one_description_and_the_same_uids_again(flag_all_engine, invalid_study,
                                                                                    tmp_path):
    _, first = _run(flag_all_engine, invalid_study, tmp_path / "first")
    _, second = _run(flag_all_engine, invalid_study, tmp_path / "second")
    for side in ("R", "L"):
        maps = [first[f"mammography_heatmap_{side}_{view}.dcm"] for view in ("CC", "MLO")]
        assert {(m.SeriesInstanceUID, m.SeriesDescription, m.SeriesDate, m.SeriesTime) for m in maps} == {
            (maps[0].SeriesInstanceUID, f"AI mammography heat maps {side}", maps[0].SeriesDate, maps[0].SeriesTime)}
        for view, heat_map in zip(("CC", "MLO"), maps, strict=True):
            assert heat_map.DerivationDescription.endswith(f"AI mammography heat map {side} {view}")
            assert heat_map.ImageComments == STATEMENT and heat_map.BodyPartExamined == "BREAST"
    assert first["mammography_heatmap_R_CC.dcm"].SeriesInstanceUID != first["mammography_heatmap_L_CC.dcm"] \
        .SeriesInstanceUID
    (qualitative,) = [i for i in first["mammography_sr.dcm"].ContentSequence if i.ValueType == "CONTAINER"
                      and i.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"]
    assert qualitative.ContentSequence[-1].TextValue == STATEMENT
    for name, result in first.items():
        assert (result.SOPInstanceUID, result.SeriesInstanceUID) == (second[name].SOPInstanceUID,
                                                                     second[name].SeriesInstanceUID), name
