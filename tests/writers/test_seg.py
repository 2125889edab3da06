from __future__ import annotations

from io import BytesIO

import highdicom as hd
import numpy as np
import pytest
from pydicom.uid import generate_uid

from dicom_io import validate
from dicom_io.writers.seg import NODULE, SegmentSpec, binary_segmentation


def _roundtrip(seg) -> hd.seg.Segmentation:
    buffer = BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return hd.seg.segread(buffer)


def _two_nodule_mask() -> np.ndarray:
    mask = np.zeros((6, 16, 20), np.uint8)
    mask[2:4, 3:6, 4:8] = 1
    mask[4, 10:12, 10:13] = 2
    return mask


SEGMENTS = [
    SegmentSpec(1, "nodule 1", tracking_id="nodule-1"),
    SegmentSpec(2, "nodule 2", tracking_id="nodule-2"),
]


def _headers_only(datasets):
    for ds in datasets:
        del ds.PixelData
    return datasets


def _build(source, mask, provenance, segments=SEGMENTS):
    return binary_segmentation(
        source,
        mask,
        segments,
        provenance=provenance,
        series_instance_uid=generate_uid(),
        series_number=800,
        description="radinfer lung_nodules_phantom SEG",
    )


@pytest.mark.parametrize("style", ["labels", "stacked"])
def test_binary_segmentation_frames_map_to_their_source_slices(style, ct_series, provenance):
    mask = _two_nodule_mask()
    array = mask if style == "labels" else np.stack([mask == 1, mask == 2], axis=-1)
    seg = _roundtrip(_build(_headers_only(ct_series), array, provenance))

    assert seg.SegmentationType == "BINARY"
    assert seg.NumberOfFrames == 3  # empty frames omitted: slices 2, 3 (segment 1) and 4 (segment 2)
    uids = [ds.SOPInstanceUID for ds in ct_series]
    back = seg.get_pixels_by_source_instance(
        uids, segment_numbers=[1, 2], assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(back[..., 0], mask == 1)
    np.testing.assert_array_equal(back[..., 1], mask == 2)
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced == set(uids)


def test_binary_segmentation_keeps_study_new_series_and_provenance(ct_series, provenance):
    seg = _roundtrip(_build(ct_series, _two_nodule_mask(), provenance))
    source = ct_series[0]
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesNumber == 800 and seg.SeriesDescription == "radinfer lung_nodules_phantom SEG"
    assert seg.PatientID == source.PatientID
    assert seg.Manufacturer == "radinfer" and seg.ManufacturerModelName == provenance.name
    assert seg.DeviceSerialNumber == "sha256:" + "ab" * 8
    assert seg.ImageType[0] == "DERIVED"
    assert "Not for clinical use" in seg.ImageComments
    assert provenance.name in [
        item.get("ManufacturerModelName") for item in seg.ContributingEquipmentSequence
    ]
    for number, spec in enumerate(SEGMENTS, start=1):
        description = seg.get_segment_description(number)
        assert description.segment_label == spec.label
        assert description.tracking_id == spec.tracking_id and description.tracking_uid
        assert description.segmented_property_type == NODULE
        assert description.algorithm_type.value == "AUTOMATIC"
        assert description.algorithm_identification[0].AlgorithmName == provenance.name
        assert description.algorithm_identification[0].AlgorithmVersion == provenance.version
        assert description.algorithm_identification[0].AlgorithmFamilyCodeSequence[0].CodeMeaning == (
            "Artificial Intelligence"
        )


def test_binary_segmentation_keeps_given_tracking_uid(ct_series, provenance):
    uid = generate_uid()
    seg = _build(
        ct_series,
        _two_nodule_mask() == 1,
        provenance,
        [SegmentSpec(1, "n", tracking_id="n", tracking_uid=uid)],
    )
    assert seg.get_segment_description(1).tracking_uid == uid


def test_binary_segmentation_multiframe_source_maps_frames(ct_series, provenance):
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        ct_series,
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    mask = _two_nodule_mask()
    seg = _roundtrip(_build([enhanced], mask, provenance))
    back = seg.get_pixels_by_source_frame(
        enhanced.SOPInstanceUID,
        source_frame_numbers=list(range(1, 7)),
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    np.testing.assert_array_equal(back, mask)


@pytest.mark.parametrize(
    "mask, segments, match",
    [
        (np.zeros((5, 16, 20), np.uint8), SEGMENTS, "does not match the source images"),
        (np.full((6, 16, 20), 3, np.uint8), SEGMENTS, "labels must lie in 0..2"),
        (np.zeros((6, 16, 20, 3), bool), SEGMENTS, "3 stacked segments but 2"),
        (np.zeros((6, 16, 20), np.uint8), [SegmentSpec(2, "x")], "1..N in order"),
        (np.zeros((6, 16, 20), np.float32), SEGMENTS, "integer label array"),
    ],
    ids=["wrong-slices", "label-out-of-range", "stack-count", "numbering", "float"],
)
def test_binary_segmentation_rejects_inconsistent_inputs(mask, segments, match, ct_series, provenance):
    with pytest.raises(ValueError, match=match):
        _build(ct_series, mask, provenance, segments)


@pytest.mark.skipif(not validate.available(), reason="dciodvfy (dicom3tools) is not installed")
def test_binary_segmentation_passes_dciodvfy_without_errors(ct_series, provenance):
    result = validate.dciodvfy(_build(ct_series, _two_nodule_mask(), provenance))
    assert result.errors == []
