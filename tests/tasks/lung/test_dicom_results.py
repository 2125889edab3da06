"""The lung DICOM results (SEG, SR, key images) as a PACS receives them: written for sources with invalid patient
or study values, one description per series, the research-use statement, the same UIDs for a re-analysis, and an
SR for a study without nodules."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_io import validate
from dicom_io.limits import Limits
from dicom_io.synthetic import write_ct_series
from inference.findings import RESEARCH_USE_DISCLAIMER, SYNTHETIC_TRAINING_DISCLAIMER, FindingsReport
from inference.pipeline import analyze
from inference.tasks.lung_nodules import LUNG_RADS, NO_NODULE_NOTE

from .conftest import PHANTOM_SHAPE, PHANTOM_SPACING, _phantom_module

STATEMENT = f"{RESEARCH_USE_DISCLAIMER} {SYNTHETIC_TRAINING_DISCLAIMER}"
INVALID = {"StudyDate": "2024-01-01", "PatientSex": "X", "PatientBirthDate": "notadate"}


def _analyze(folder: Path, engine, workdir: Path) -> tuple[FindingsReport, dict[str, pydicom.Dataset]]:
    report = analyze([folder], engine, model="lung_nodule", limits=Limits(), workdir=workdir)
    dicom = {a.name: pydicom.dcmread(workdir / a.name) for a in report.artifacts if a.media_type == "application/dicom"}
    return report, dicom


def _texts(items) -> list[str]:
    found = []
    for item in items:
        if item.ValueType == "TEXT":
            found.append(item.TextValue)
        found += _texts(item.get("ContentSequence", []))
    return found


@pytest.fixture(scope="module")
def invalid_source(lung_engine, write_phantom, tmp_path_factory):
    """The nodule phantom with an ISO StudyDate, PatientSex X and a PatientBirthDate that is no date."""
    with pytest.warns(UserWarning):  # pydicom warns about the invalid values as the phantom is written
        paths = write_phantom("invalid", tags=INVALID)
    workdir = tmp_path_factory.mktemp("job")
    return paths[0].parent, _analyze(paths[0].parent, lung_engine, workdir), workdir


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_invalid_source_values_still_give_seg_sr_and_key_images_that_validate(invalid_source):
    _, (report, dicom), workdir = invalid_source
    assert report.findings and {"seg.dcm", "sr.dcm", "key_nodule_1.dcm"} <= set(dicom)
    assert report.summary["dicom_attributes_left_out"] == "PatientBirthDate, PatientSex"
    for name, result in dicom.items():
        assert (result.StudyDate, result.PatientSex, result.PatientBirthDate) == ("20240101", "", ""), name
        if validate.available():
            assert validate.dciodvfy(workdir / name).errors == [], name


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_each_result_series_has_one_description_and_the_statement(invalid_source):
    _, (report, dicom), workdir = invalid_source
    keys = [dicom[f"key_nodule_{f.segment_number}.dcm"] for f in report.findings]
    assert len(keys) > 1
    assert {(k.SeriesInstanceUID, k.SeriesDescription, k.SeriesDate, k.SeriesTime) for k in keys} == {
        (keys[0].SeriesInstanceUID, "AI lung nodule key images", keys[0].SeriesDate, keys[0].SeriesTime)}
    for finding, key in zip(report.findings, keys, strict=True):
        assert key.DerivationDescription.endswith(f"Nodule {finding.segment_number} key image")
        assert "Laterality" not in key and key.BodyPartExamined == "CHEST"  # the chest is not a paired part
        assert key.ImageComments == STATEMENT
        if validate.available():
            assert not [w for w in validate.dciodvfy(workdir / f"key_nodule_{finding.segment_number}.dcm").warnings
                        if "Laterality" in w]
    assert dicom["seg.dcm"].SeriesDescription == "AI lung nodule segmentation"
    assert dicom["seg.dcm"].ImageComments == STATEMENT
    assert dicom["sr.dcm"].SeriesDescription == "AI lung nodule report"
    assert STATEMENT in _texts(dicom["sr.dcm"].ContentSequence)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_a_reanalysis_gives_the_same_uids_and_the_sr_still_tracks_the_seg(invalid_source, lung_engine, tmp_path):
    folder, (_, first), _ = invalid_source
    _, second = _analyze(folder, lung_engine, tmp_path / "again")
    assert set(first) == set(second)
    for name in first:
        assert (first[name].SOPInstanceUID, first[name].SeriesInstanceUID) == (
            second[name].SOPInstanceUID, second[name].SeriesInstanceUID), name
    seg = hd.seg.Segmentation.from_dataset(second["seg.dcm"])
    sr = hd.sr.Comprehensive3DSR.from_dataset(second["sr.dcm"])
    for group in sr.content.get_volumetric_roi_measurement_groups():
        (number,) = group.referenced_segment.referenced_segment_numbers
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert group.tracking_uid == seg.get_segment_description(number).tracking_uid


def test_a_study_without_nodules_gets_an_sr_that_says_so(lung_engine, tmp_path):
    phantom = _phantom_module().generate_phantom(11, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING, nodules=[],
                                                 noise_sd=15.0)
    write_ct_series(phantom.hu, tmp_path / "ct", spacing=phantom.spacing, origin=phantom.origin)
    report, dicom = _analyze(tmp_path / "ct", lung_engine, tmp_path / "job")
    assert report.summary["nodules"] == 0 and report.summary["lung_rads_suggestion"] == "1"
    assert not {"gantry_tilt_deg", "lossy_input"} & set(report.summary)  # an untilted, lossless series
    assert list(dicom) == ["sr.dcm"]
    sr = hd.sr.srread(tmp_path / "job" / "sr.dcm")
    assert sr.content.get_planar_roi_measurement_groups() == sr.content.get_volumetric_roi_measurement_groups() == []
    (container,) = [i for i in sr.ContentSequence if i.ValueType == "CONTAINER"]
    (category,) = [i for i in container.ContentSequence if i.ValueType == "CODE"]
    assert category.ConceptNameCodeSequence[0].CodeValue == LUNG_RADS.value
    assert category.ConceptCodeSequence[0].CodeValue == "LUNGRADS-1"
    texts = _texts(container.ContentSequence)
    assert texts[0] == NO_NODULE_NOTE and texts[-1] == STATEMENT
    assert sr.SeriesDescription == "AI lung nodule report" and sr.SeriesDate
    if validate.available():
        assert validate.dciodvfy(tmp_path / "job" / "sr.dcm").errors == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_a_tilted_or_lossy_series_is_flagged_in_the_report(lung_engine, tmp_path):
    """Sizes on a gantry-tilted series are less reliable, and lossy pixels may shift them: the report says so."""
    phantom = _phantom_module().generate_phantom(12, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING, nodules=[],
                                                 noise_sd=15.0)
    paths = write_ct_series(phantom.hu, tmp_path / "ct", spacing=phantom.spacing, origin=phantom.origin)
    for path in paths:  # a 5 degree tilt: each slice shifts along y by z * tan(5 deg), as tilted CT is stored
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + (z - phantom.origin[2]) * np.tan(np.radians(5.0)), z]
        ds.GantryDetectorTilt = 5.0
        ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
        ds.save_as(path)
    report, _ = _analyze(tmp_path / "ct", lung_engine, tmp_path / "job")
    assert report.summary["gantry_tilt_deg"] == pytest.approx(5.0, abs=0.05)
    assert "gantry tilt" in str(report.summary["gantry_tilt_note"])
    assert report.summary["lossy_input"] == "LossyImageCompression 01 (ISO_10918_1)"
