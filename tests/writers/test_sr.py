from __future__ import annotations

from io import BytesIO

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_io import validate
from dicom_io.writers.provenance import ModelProvenance
from dicom_io.writers.seg import SegmentSpec, binary_segmentation
from dicom_io.writers.sr import (
    COMMENT,
    QUALITATIVE_EVALUATIONS,
    MeasurementGroupSpec,
    PlanarROI,
    SegmentROI,
    WholeImage,
    measurement_report,
)

MONTHS = Code("mo", "UCUM", "months")
NODULE_TYPE = Code("NoduleType", "99RADINFER", "Nodule type")  # private stand-in codes for the round trip
SOLID = Code("Solid", "99RADINFER", "Solid")
BONE_AGE = Code("BoneAge", "99RADINFER", "Bone age")


SEGMENT_SLICES = {1: (2, 3), 2: (4,)}  # slices holding each segment in the ``seg`` fixture


def _roundtrip(sr) -> hd.sr.Comprehensive3DSR:
    buffer = BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return hd.sr.srread(buffer)


@pytest.fixture
def seg(ct_series, provenance):
    mask = np.zeros((6, 16, 20), np.uint8)
    mask[2:4, 3:6, 4:8] = 1
    mask[4, 10:12, 10:13] = 2
    segments = [
        SegmentSpec(1, "nodule 1", tracking_id="nodule-1"),
        SegmentSpec(2, "nodule 2", tracking_id="nodule-2"),
    ]
    return binary_segmentation(
        ct_series,
        mask,
        segments,
        provenance=provenance,
        series_instance_uid=generate_uid(),
        series_number=800,
        description="radinfer SEG",
    )


def _lung_report(ct_series, seg, provenance):
    groups = [
        MeasurementGroupSpec(
            SegmentROI(seg, number),
            f"nodule-{number}",
            codes.SCT.Nodule,
            measurements=[(codes.SCT.Diameter, 6.5 + number, codes.UCUM.Millimeter)],
            qualitative_evaluations=[(NODULE_TYPE, SOLID)],
            finding_site=codes.SCT.Lung,
        )
        for number in (1, 2)
    ]
    return measurement_report(
        ct_series,
        groups,
        provenance=provenance,
        series_instance_uid=generate_uid(),
        series_number=801,
        description="radinfer lung SR",
        procedure_code=codes.cid100.CTUnspecifiedBodyRegion,
        qualitative_study_findings=[(codes.DCM.Finding, codes.SCT.Nodule)],
    )


def test_measurement_report_segment_groups_reference_seg_and_copy_tracking(ct_series, seg, provenance):
    sr = _roundtrip(_lung_report(ct_series, seg, provenance))

    assert sr.StudyInstanceUID == ct_series[0].StudyInstanceUID
    assert sr.SeriesInstanceUID not in (ct_series[0].SeriesInstanceUID, seg.SeriesInstanceUID)
    assert sr.Manufacturer == "radinfer" and sr.ManufacturerModelName == provenance.name
    assert sr.SeriesDescription == "radinfer lung SR" and sr.VerificationFlag == "UNVERIFIED"
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["nodule-1", "nodule-2"]
    for number, group in enumerate(groups, start=1):
        reference = group.referenced_segment[0]
        assert reference.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert reference.ReferencedSOPSequence[0].ReferencedSegmentNumber == number
        assert group.tracking_uid == seg.get_segment_description(number).tracking_uid
        sources = {
            item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in group.referenced_segment[1:]
        }
        assert sources == {ct_series[k].SOPInstanceUID for k in SEGMENT_SLICES[number]}
        assert group.finding_type == codes.SCT.Nodule
        assert group.finding_sites[0].value == codes.SCT.Lung
        (diameter,) = group.get_measurements(name=codes.SCT.Diameter)
        assert diameter.value == pytest.approx(6.5 + number)
        assert diameter.unit == codes.UCUM.Millimeter
        assert group.get_qualitative_evaluations(name=NODULE_TYPE)[0].value == SOLID
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {seg.SOPInstanceUID, *(ds.SOPInstanceUID for ds in ct_series)}


def test_measurement_report_device_observer_procedure_and_research_statement(ct_series, seg, provenance):
    sr = _roundtrip(_lung_report(ct_series, seg, provenance))
    (observer,) = sr.content.get_observer_contexts(observer_type=codes.DCM.Device)
    assert observer.observer_identifying_attributes.name == provenance.name
    root = sr.ContentSequence
    procedure = [i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "121058"]
    assert procedure[0].ConceptCodeSequence[0].CodeValue == codes.cid100.CTUnspecifiedBodyRegion.value
    (container,) = [
        i for i in root if i.ConceptNameCodeSequence[0].CodeValue == QUALITATIVE_EVALUATIONS.value
    ]
    texts = [i.TextValue for i in container.ContentSequence if i.ValueType == "TEXT"]
    codes_ = [i.ConceptCodeSequence[0].CodeValue for i in container.ContentSequence if i.ValueType == "CODE"]
    assert texts == [provenance.statement()] and "Not for clinical use" in texts[0]
    assert container.ContentSequence[-1].ConceptNameCodeSequence[0].CodeValue == COMMENT.value
    assert codes_ == [codes.SCT.Nodule.value]


def test_measurement_report_planar_rectangle_and_point_regions(ct_series, provenance):
    image = ct_series[4]
    groups = [
        MeasurementGroupSpec(
            PlanarROI.rectangle(image, (10, 10), (12, 13)),
            "box",
            codes.SCT.Nodule,
            measurements=[(codes.SCT.Diameter, 2.4, codes.UCUM.Millimeter)],
        ),
        MeasurementGroupSpec(PlanarROI.point(image, (11, 12)), "centre", codes.SCT.Nodule),
    ]
    sr = _roundtrip(
        measurement_report(
            [image],
            groups,
            provenance=provenance,
            series_instance_uid=generate_uid(),
            series_number=5,
            description="planar",
        )
    )
    box, point = sr.content.get_planar_roi_measurement_groups()
    assert box.roi.graphic_type.value == "POLYLINE"
    # (column, row) DICOM image coordinates: pixel edges of rows 10..12 and columns 10..13, closed.
    np.testing.assert_allclose(box.roi.value, [[10, 10], [13, 10], [13, 12], [10, 12], [10, 10]])
    assert (
        box.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    )
    assert point.roi.graphic_type.value == "POINT"
    np.testing.assert_allclose(point.roi.value, [[12.5, 11.5]])
    assert box.get_measurements()[0].value == pytest.approx(2.4)


def test_measurement_report_whole_image_bone_age(dx_image, provenance):
    group = MeasurementGroupSpec(
        WholeImage(dx_image), "bone-age", BONE_AGE, measurements=[(BONE_AGE, 126.5, MONTHS)]
    )
    sr = _roundtrip(
        measurement_report(
            [dx_image],
            [group],
            provenance=provenance,
            series_instance_uid=generate_uid(),
            series_number=5,
            description="radinfer bone age SR",
        )
    )
    (back,) = sr.content.get_image_measurement_groups()
    assert back.source_images[0].referenced_sop_instance_uid == dx_image.SOPInstanceUID
    (measurement,) = back.get_measurements(name=BONE_AGE)
    assert measurement.value == pytest.approx(126.5) and measurement.unit == MONTHS
    (scheme,) = sr.CodingSchemeIdentificationSequence  # the private code BONE_AGE's scheme, declared
    assert scheme.CodingSchemeDesignator == "99RADINFER" and scheme.CodingSchemeResponsibleOrganization == "radinfer"


def test_measurement_report_declares_no_scheme_when_it_uses_only_standard_codes(ct_series, provenance):
    group = MeasurementGroupSpec(PlanarROI.point(ct_series[4], (11, 12)), "centre", codes.SCT.Nodule)
    sr = measurement_report([ct_series[4]], [group], provenance=provenance, series_instance_uid=generate_uid(),
                            series_number=5, description="standard codes")
    assert "CodingSchemeIdentificationSequence" not in sr


@pytest.mark.parametrize(
    "make_roi, match",
    [
        (lambda ct, seg: SegmentROI(seg, 7), "segment 7 is not in the SEG"),
        (lambda ct, seg: PlanarROI(ct[0], "POLYLINE", ((0, 0), (1, 1))), "at least 3 points"),
        (lambda ct, seg: PlanarROI(ct[0], "CIRCLE", ((0, 0), (1, 1))), "graphic_type must be"),
    ],
    ids=["missing-segment", "short-polyline", "circle"],
)
def test_measurement_report_rejects_bad_roi(make_roi, match, ct_series, seg, provenance):
    group = MeasurementGroupSpec(make_roi(ct_series, seg), "x", codes.SCT.Nodule)
    with pytest.raises(ValueError, match=match):
        measurement_report(
            ct_series,
            [group],
            provenance=provenance,
            series_instance_uid=generate_uid(),
            series_number=5,
            description="x",
        )


@pytest.mark.skipif(not validate.available(), reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("kind", ["segments", "planar", "whole-image"])
def test_measurement_report_passes_dciodvfy_without_errors(kind, ct_series, seg, dx_image, provenance):
    if kind == "segments":
        sr = _lung_report(ct_series, seg, provenance)
    else:
        roi = PlanarROI.rectangle(ct_series[1], (1, 1), (4, 5)) if kind == "planar" else WholeImage(dx_image)
        group = MeasurementGroupSpec(roi, "g", BONE_AGE, measurements=[(BONE_AGE, 100.0, MONTHS)])
        sr = measurement_report(
            [roi.image],
            [group],
            provenance=provenance,
            series_instance_uid=generate_uid(),
            series_number=5,
            description="x",
        )
    assert validate.dciodvfy(sr).errors == []


def test_measurement_report_single_segment_seg_references_its_source_slices(ct_series, provenance):
    mask = np.zeros((6, 16, 20), bool)
    mask[1:3, 2:5, 2:5] = True
    single = binary_segmentation(
        ct_series,
        mask,
        [SegmentSpec(1, "n", tracking_id="n")],
        provenance=provenance,
        series_instance_uid=generate_uid(),
        series_number=800,
        description="one segment",
    )
    group = MeasurementGroupSpec(SegmentROI(single, 1), "n", codes.SCT.Nodule)
    sr = _roundtrip(
        measurement_report(
            ct_series,
            [group],
            provenance=provenance,
            series_instance_uid=generate_uid(),
            series_number=801,
            description="x",
        )
    )
    (back,) = sr.content.get_volumetric_roi_measurement_groups()
    sources = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in back.referenced_segment[1:]]
    assert sorted(sources) == sorted([ct_series[1].SOPInstanceUID, ct_series[2].SOPInstanceUID])


def test_measurement_report_without_groups_holds_the_study_findings_comments_and_statement(ct_series, provenance):
    """A study where the model found nothing still gets its report: TID 1500 with Qualitative Evaluations only."""
    sr = measurement_report(ct_series, [], provenance=provenance, series_instance_uid=generate_uid(),
                            series_number=5, description="AI report", study_comments=["No nodule found."],
                            qualitative_study_findings=[(codes.DCM.Finding, codes.SCT.Lung)])
    back = _roundtrip(sr)
    assert back.content.get_image_measurement_groups() == []
    root = [i.ConceptNameCodeSequence[0].CodeValue for i in back.ContentSequence]
    assert codes.DCM.ImagingMeasurements.value not in root and QUALITATIVE_EVALUATIONS.value in root
    (container,) = [i for i in back.ContentSequence
                    if i.ConceptNameCodeSequence[0].CodeValue == QUALITATIVE_EVALUATIONS.value]
    assert [i.TextValue for i in container.ContentSequence if i.ValueType == "TEXT"] == [
        "No nodule found.", provenance.statement()]
    evidence = {item.ReferencedSOPInstanceUID for study in back.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert evidence == {ds.SOPInstanceUID for ds in ct_series}
    if validate.available():
        result = validate.dciodvfy(sr)
        assert result.errors == [] and result.warnings == []


def test_measurement_report_with_nothing_to_say_is_refused(ct_series):
    clinical = ModelProvenance("m", "1", "", trained_on_synthetic_data=False, disclaimer="")
    with pytest.raises(ValueError, match="needs a MeasurementGroupSpec or a study-level finding"):
        measurement_report(ct_series, [], provenance=clinical, series_instance_uid=generate_uid(), series_number=5,
                           description="x")
