"""Writers on sources seen in the wild but not in the other writer tests: Type 2 patient and study attributes
absent from the source (PatientSex, PatientBirthDate...), which highdicom's SEG and SR constructors read."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_io import validate
from dicom_io.writers.seg import SegmentSpec, binary_segmentation
from dicom_io.writers.source import TYPE2_COPIED, with_type2_attributes
from dicom_io.writers.sr import MeasurementGroupSpec, SegmentROI, WholeImage, measurement_report
from tests.writers.conftest import make_ct_series, make_dx_image

needs_dciodvfy = pytest.mark.skipif(not validate.available(), reason="dciodvfy (dicom3tools) is not installed")
ABSENT = ("PatientSex", "PatientBirthDate", "AccessionNumber", "StudyID")


def _without(datasets, keywords=ABSENT):
    for ds in datasets:
        for keyword in keywords:
            del ds[keyword]
    return datasets


def test_with_type2_attributes_adds_empty_values_on_a_copy():
    (source,) = _without([make_dx_image()])
    completed = with_type2_attributes(source)
    assert completed is not source
    for keyword in ABSENT:
        assert keyword not in source
        assert completed[keyword].value in (None, "")
    assert all(keyword in completed for keyword in TYPE2_COPIED)
    assert completed.SOPInstanceUID == source.SOPInstanceUID and completed.PatientID == source.PatientID
    assert with_type2_attributes(completed) is completed


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
