"""Writers on what the pipeline gives them: header-only datasets read by dicom_io.reader (synthetic data)."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_io import validate
from dicom_io.limits import Limits
from dicom_io.reader import read_headers
from dicom_io.synthetic import write_ct_series, write_projection_image
from dicom_io.writers.sc import secondary_capture
from dicom_io.writers.seg import SegmentSpec, binary_segmentation
from dicom_io.writers.sr import MeasurementGroupSpec, PlanarROI, SegmentROI, measurement_report

needs_dciodvfy = pytest.mark.skipif(
    not validate.available(), reason="dciodvfy (dicom3tools) is not installed"
)


@pytest.fixture
def ct_headers(tmp_path):
    hu = np.full((8, 24, 20), -800, np.int16)
    paths = write_ct_series(hu, tmp_path / "ct", spacing=(2.0, 0.7, 0.7), shuffle=True)
    (series,) = read_headers(paths, Limits()).series
    return sorted((h.dataset for h in series.instances), key=lambda ds: float(ds.ImagePositionPatient[2]))


@pytest.fixture
def mg_header(tmp_path):
    path = write_projection_image(
        np.full((40, 30), 900.0),
        tmp_path / "mg.dcm",
        modality="MG",
        tags={"ImageLaterality": "L", "ViewPosition": "CC", "BodyPartExamined": "BREAST"},
    )
    (series,) = read_headers([path], Limits()).series
    return series.instances[0].dataset


@needs_dciodvfy
def test_ct_headers_seg_and_sr_validate_and_reference_each_other(ct_headers, provenance):
    assert "PixelData" not in ct_headers[0]
    mask = np.zeros((8, 24, 20), np.uint8)
    mask[3:5, 10:14, 8:12] = 1
    seg = binary_segmentation(
        ct_headers,
        mask,
        [SegmentSpec(1, "nodule 1", tracking_id="nodule-1")],
        provenance=provenance,
        series_instance_uid=generate_uid(),
        series_number=900,
        description="radinfer SEG",
    )
    back = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in ct_headers], combine_segments=True)
    np.testing.assert_array_equal(back, mask)
    group = MeasurementGroupSpec(
        SegmentROI(seg, 1),
        "nodule-1",
        codes.SCT.Nodule,
        measurements=[(codes.SCT.Diameter, 2.8, codes.UCUM.Millimeter)],
    )
    sr = measurement_report(
        ct_headers,
        [group],
        provenance=provenance,
        series_instance_uid=generate_uid(),
        series_number=901,
        description="radinfer SR",
    )
    assert validate.dciodvfy(seg).errors == []
    assert validate.dciodvfy(sr).errors == []


@needs_dciodvfy
def test_mg_header_sc_seg_and_sr_validate(mg_header, provenance):
    rgb = np.zeros((40, 30, 3), np.uint8)
    sc = secondary_capture(
        mg_header,
        rgb,
        provenance=provenance,
        series_instance_uid=generate_uid(),
        series_number=910,
        description="radinfer heat map",
    )
    assert sc.Laterality == "L"
    mask = np.zeros((1, 40, 30), bool)
    mask[0, 5:15, 5:12] = True
    finding = Code("MassFinding", "99RADINFER", "Mass")
    seg = binary_segmentation(
        [mg_header],
        mask,
        [SegmentSpec(1, "mass", type_code=finding, tracking_id="mass-1")],
        provenance=provenance,
        series_instance_uid=generate_uid(),
        series_number=911,
        description="radinfer SEG",
    )
    assert list(seg.PatientOrientation) == list(mg_header.PatientOrientation)
    np.testing.assert_array_equal(
        hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
            [mg_header.SOPInstanceUID], combine_segments=True
        )[0],
        mask[0],
    )
    group = MeasurementGroupSpec(PlanarROI.rectangle(mg_header, (5, 5), (15, 12)), "mass-1", finding)
    sr = measurement_report(
        [mg_header],
        [group],
        provenance=provenance,
        series_instance_uid=generate_uid(),
        series_number=912,
        description="radinfer SR",
    )
    for ds in (sc, seg, sr):
        assert validate.dciodvfy(ds).errors == [], ds.Modality
