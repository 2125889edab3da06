"""Writers on sources seen in the wild but not in the other writer tests: Type 2 patient and study attributes
absent from the source (PatientSex, PatientBirthDate...), which highdicom's SEG and SR constructors read, and
values that are not valid DICOM (ISO dates, PatientSex "X" or "m"), which made them raise."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_io import validate
from dicom_io.writers.sc import secondary_capture
from dicom_io.writers.seg import SegmentSpec, binary_segmentation
from dicom_io.writers.source import TYPE2_COPIED, left_out_attributes, result_source
from dicom_io.writers.sr import MeasurementGroupSpec, SegmentROI, WholeImage, measurement_report
from tests.writers.conftest import make_ct_series, make_dx_image

needs_dciodvfy = pytest.mark.skipif(not validate.available(), reason="dciodvfy (dicom3tools) is not installed")
ABSENT = ("PatientSex", "PatientBirthDate", "AccessionNumber", "StudyID")


def _without(datasets, keywords=ABSENT):
    for ds in datasets:
        for keyword in keywords:
            del ds[keyword]
    return datasets


def test_result_source_adds_empty_values_on_a_copy():
    (source,) = _without([make_dx_image()])
    completed = result_source(source)
    assert completed is not source
    for keyword in ABSENT:
        assert keyword not in source
        assert completed[keyword].value in (None, "")
    assert all(keyword in completed for keyword in TYPE2_COPIED)
    assert completed.SOPInstanceUID == source.SOPInstanceUID and completed.PatientID == source.PatientID
    assert result_source(completed) is completed


@needs_dciodvfy
def test_seg_and_sr_of_a_ct_series_without_patient_sex_and_birth_date(provenance):
    series = _without(make_ct_series())
    mask = np.zeros((6, 16, 20), np.uint8)
    mask[2:4, 5:9, 6:10] = 1
    seg = binary_segmentation(series, mask, [SegmentSpec(1, "nodule 1", tracking_id="nodule-1")],
                              provenance=provenance, series_instance_uid=generate_uid(), series_number=900,
                              description="radinfer SEG")
    sr = measurement_report(series, [MeasurementGroupSpec(SegmentROI(seg, 1), "nodule-1", codes.SCT.Nodule,
                                                          measurements=[(codes.SCT.Diameter, 3.5, codes.UCUM.Millimeter)])],
                            provenance=provenance, series_instance_uid=generate_uid(), series_number=901,
                            description="radinfer SR")
    for result in (seg, sr):
        assert result.PatientID == series[0].PatientID and result.StudyInstanceUID == series[0].StudyInstanceUID
        assert result.PatientSex in (None, "") and result.PatientBirthDate in (None, "")
        assert validate.dciodvfy(result).errors == [], result.Modality
    assert "PatientSex" not in series[0]


def test_sr_of_a_radiograph_without_patient_sex_round_trips(provenance):
    (image,) = _without([make_dx_image()], ("PatientSex",))
    sr = measurement_report([image], [MeasurementGroupSpec(WholeImage(image), "bone age", codes.SCT.Bone,
                                                           measurements=[(codes.SCT.Diameter, 103.1, codes.UCUM.Millimeter)])],
                            provenance=provenance, series_instance_uid=generate_uid(), series_number=902,
                            description="radinfer SR")
    (group,) = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    assert [float(m.value) for m in group.get_measurements()] == [103.1]


# keyword, value in the source, value in the results (None: left out)
INVALID = [
    ("StudyDate", "2024-01-01", "20240101"),
    ("PatientBirthDate", "notadate", None),
    ("PatientBirthDate", "20240231", None),
    ("PatientSex", "X", None),
    ("PatientSex", "m", "M"),
    ("StudyTime", "12:30:00", "123000"),
    ("StudyTime", "2561", None),
]
INVALID_IDS = ["iso-study-date", "birth-date-text", "february-31", "sex-X", "sex-lower-case", "iso-time", "bad-time"]


def _read_back(dataset) -> pydicom.Dataset:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _with_value(datasets, tmp_path: Path, keyword: str, value: str) -> list[pydicom.Dataset]:
    """The datasets with ``keyword`` = ``value``, written and read back: raw elements, as a job reads them."""
    read = []
    for n, ds in enumerate(datasets):
        setattr(ds, keyword, value)  # pydicom warns about some, and writes them
        ds.save_as(tmp_path / f"{n}.dcm", enforce_file_format=True)
        read.append(pydicom.dcmread(tmp_path / f"{n}.dcm"))
    return read


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize(("keyword", "value", "expected"), INVALID, ids=INVALID_IDS)
def test_sc_seg_and_sr_of_a_source_with_an_invalid_value_carry_it_normalised_or_empty(
        tmp_path, provenance, keyword, value, expected):
    series = _with_value(make_ct_series(), tmp_path, keyword, value)
    mask = np.zeros((6, 16, 20), np.uint8)
    mask[2:4, 5:9, 6:10] = 1
    sc = secondary_capture(series[2], np.zeros((16, 20, 3), np.uint8), provenance=provenance,
                           series_instance_uid=generate_uid(), series_number=899, description="key image")
    seg = binary_segmentation(series, mask, [SegmentSpec(1, "nodule 1", tracking_id="nodule-1")],
                              provenance=provenance, series_instance_uid=generate_uid(), series_number=900,
                              description="radinfer SEG")
    sr = measurement_report(series, [MeasurementGroupSpec(SegmentROI(seg, 1), "nodule-1", codes.SCT.Nodule)],
                            provenance=provenance, series_instance_uid=generate_uid(), series_number=901,
                            description="radinfer SR")
    for result in (sc, seg, sr):
        back = _read_back(result)
        assert keyword in back and (back[keyword].value or None) == expected, result.Modality
        assert back.PatientID == series[0].PatientID and back.StudyDescription == series[0].StudyDescription
        if validate.available():
            assert validate.dciodvfy(back).errors == [], result.Modality
    assert str(series[0][keyword].value) == value  # the source is not changed
    assert left_out_attributes(series[0]) == ([] if expected else [keyword])


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_result_source_keeps_valid_values_and_leaves_out_an_invalid_optional_one():
    source = make_dx_image()
    source.IssuerOfPatientID = "HOSP-\u00c4"
    source.PatientAge = "nine"  # Type 3: absent from the results, not empty
    source.StudyDescription = "Hand links \u2013 Knochenalter"
    source.PatientSex = " f "
    cleaned = result_source(source)
    assert "PatientAge" not in cleaned and cleaned.PatientSex == "F"
    assert (cleaned.IssuerOfPatientID, cleaned.StudyDescription) == (source.IssuerOfPatientID, source.StudyDescription)
    assert cleaned.PatientName == source.PatientName and cleaned.PatientBirthDate == source.PatientBirthDate
    assert left_out_attributes(source) == ["PatientAge"] and source.PatientAge == "nine"
    valid = make_dx_image()
    assert result_source(valid) is valid and left_out_attributes(valid) == []
