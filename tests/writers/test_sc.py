from __future__ import annotations

import copy
from datetime import datetime
from io import BytesIO

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag
from pydicom.uid import generate_uid

from dicom_io import validate
from dicom_io.writers.provenance import ModelProvenance
from dicom_io.writers.sc import save_png, secondary_capture


def _roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _overlay(rows: int, columns: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(rows, columns, 3), dtype=np.uint8)


@pytest.mark.parametrize("source_name", ["ct_series", "dx_image"], ids=["ct-slice", "dx"])
def test_secondary_capture_rgb_roundtrip_keeps_study_pixels_and_provenance(source_name, request, provenance):
    source = request.getfixturevalue(source_name)
    source = source[2] if isinstance(source, list) else source
    rgb = _overlay(source.Rows, source.Columns)
    series_uid = generate_uid()

    back = _roundtrip(
        secondary_capture(
            source,
            rgb,
            provenance=provenance,
            series_instance_uid=series_uid,
            series_number=901,
            description="radinfer lung_nodules_phantom overlay",
        )
    )

    assert back.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID == series_uid != source.SeriesInstanceUID
    assert back.PatientID == source.PatientID
    assert back.SeriesNumber == 901 and back.InstanceNumber == 1
    assert back.PhotometricInterpretation == "RGB"
    np.testing.assert_array_equal(back.pixel_array, rgb)
    assert back.ImageType[0] == "DERIVED"
    assert back.BurnedInAnnotation == "YES" and back.ConversionType == "WSD"
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert back.Manufacturer == "radinfer"
    assert back.ManufacturerModelName == provenance.name
    assert back.DeviceSerialNumber == "sha256:" + "ab" * 8
    assert "radinfer" in " ".join(back.SoftwareVersions) and provenance.version in back.SoftwareVersions[0]
    assert "Not for clinical use" in back.ImageComments and "synthetic" in back.ImageComments
    assert provenance.name in [
        item.get("ManufacturerModelName") for item in back.ContributingEquipmentSequence
    ]


def test_secondary_capture_ct_orientation_is_derived_from_image_orientation(ct_series, provenance):
    sc = secondary_capture(
        ct_series[0],
        _overlay(16, 20),
        provenance=provenance,
        series_instance_uid=generate_uid(),
        series_number=2,
        description="overlay",
    )
    assert list(sc.PatientOrientation) == ["L", "P"]
    assert [float(v) for v in sc.PixelSpacing] == [0.8, 0.7]


def test_secondary_capture_grayscale_resized_drops_pixel_spacing(dx_image, provenance):
    gray = np.arange(10 * 12, dtype=np.uint8).reshape(10, 12)
    sc = secondary_capture(
        dx_image,
        gray,
        provenance=provenance,
        series_instance_uid=generate_uid(),
        series_number=3,
        description="key image",
    )
    back = _roundtrip(sc)
    assert back.PhotometricInterpretation == "MONOCHROME2"
    np.testing.assert_array_equal(back.pixel_array, gray)
    assert "PixelSpacing" not in back
    assert list(back.PatientOrientation) == ["A", "F"]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("spacing", ["0.25", "0\\0.25", "a\\b"])
def test_secondary_capture_leaves_out_a_malformed_pixel_spacing(dx_image, provenance, spacing):
    """One value, a zero or text: the overlay is still written, stating no spacing (a bone-age job failed)."""
    source = copy.deepcopy(dx_image)
    value = spacing.encode() + b" " * (len(spacing) % 2)
    # raw, as read from a file: converted (and warned about) only when accessed
    source[0x00280030] = RawDataElement(BaseTag(0x00280030), "DS", len(value), value, 0, False, True)
    gray = np.zeros((int(source.Rows), int(source.Columns)), dtype=np.uint8)
    sc = secondary_capture(source, gray, provenance=provenance, series_instance_uid=generate_uid(),
                           series_number=3, description="overlay")
    assert "PixelSpacing" not in _roundtrip(sc)


def test_secondary_capture_without_disclaimer_has_no_image_comments(dx_image):
    clinical = ModelProvenance("m", "1", "", trained_on_synthetic_data=False, disclaimer="")
    sc = secondary_capture(
        dx_image,
        _overlay(32, 24),
        provenance=clinical,
        series_instance_uid=generate_uid(),
        series_number=3,
        description="x",
    )
    assert "ImageComments" not in sc
    assert sc.DeviceSerialNumber == "sha256:unknown"


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 4), np.uint8)], ids=["float", "rgba"]
)
def test_secondary_capture_rejects_wrong_dtype_or_shape(bad, dx_image, provenance):
    with pytest.raises(ValueError, match="secondary_capture needs"):
        secondary_capture(
            dx_image,
            bad,
            provenance=provenance,
            series_instance_uid=generate_uid(),
            series_number=3,
            description="x",
        )


def test_secondary_capture_references_source_frame_of_multiframe_image(ct_series, provenance):
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        ct_series,
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    sc = secondary_capture(
        enhanced,
        _overlay(16, 20),
        provenance=provenance,
        series_instance_uid=generate_uid(),
        series_number=3,
        description="key image",
        source_frame=4,
    )
    reference = _roundtrip(sc).SourceImageSequence[0]
    assert (
        reference.ReferencedSOPInstanceUID == enhanced.SOPInstanceUID and reference.ReferencedFrameNumber == 4
    )
    if validate.available():
        assert validate.dciodvfy(sc).errors == []


def test_save_png_roundtrip(tmp_path):
    rgb = _overlay(7, 9)
    path = save_png(rgb, tmp_path / "o.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)


@pytest.mark.skipif(not validate.available(), reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("source_name", ["ct_series", "dx_image"], ids=["ct-slice", "dx"])
def test_secondary_capture_passes_dciodvfy_without_errors(source_name, request, provenance):
    source = request.getfixturevalue(source_name)
    source = source[0] if isinstance(source, list) else source
    sc = secondary_capture(
        source,
        _overlay(source.Rows, source.Columns),
        provenance=provenance,
        series_instance_uid=generate_uid(),
        series_number=5,
        description="overlay",
    )
    result = validate.dciodvfy(sc)
    assert result.errors == []


def test_heat_map_blend_matches_matplotlib_jet_within_one_level() -> None:
    """The table-driven blend gives matplotlib's jet colours (same 256 bins) at opacity 0.45 x heat."""
    from matplotlib import colormaps

    from dicom_io.writers.sc import heat_map_overlay

    rng = np.random.default_rng(0)
    display = rng.integers(0, 256, (120, 90), dtype=np.uint8)
    heat = rng.random((120, 90))
    heat[0, :3] = [0.0, 1.0, 0.5]
    reference = np.repeat(display[..., None].astype(np.float64), 3, axis=2)
    alpha = 0.45 * heat[..., None]
    reference = reference * (1 - alpha) + colormaps["jet"](heat)[..., :3] * 255.0 * alpha
    ours = heat_map_overlay(display, heat, [])
    assert ours.dtype == np.uint8 and ours.shape == (120, 90, 3)
    assert np.abs(ours.astype(int) - np.clip(reference, 0, 255).astype(np.uint8).astype(int)).max() <= 1
    assert np.array_equal(heat_map_overlay(display, None, []), np.repeat(display[..., None], 3, axis=2))


def test_secondary_capture_of_a_lossy_source_keeps_the_lossy_flag(dx_image, provenance):
    source = copy.deepcopy(dx_image)
    source.LossyImageCompression = "01"
    source.LossyImageCompressionRatio = [12.5]
    source.LossyImageCompressionMethod = ["ISO_10918_1"]
    gray = np.zeros((int(source.Rows), int(source.Columns)), dtype=np.uint8)
    back = _roundtrip(secondary_capture(source, gray, provenance=provenance, series_instance_uid=generate_uid(),
                                        series_number=3, description="overlay"))
    assert back.LossyImageCompression == "01" and float(back.LossyImageCompressionRatio) == 12.5
    assert back.LossyImageCompressionMethod == "ISO_10918_1"
    plain = _roundtrip(secondary_capture(dx_image, gray, provenance=provenance, series_instance_uid=generate_uid(),
                                         series_number=3, description="overlay"))
    assert plain.get("LossyImageCompression", "00") == "00"


def test_secondary_capture_carries_the_source_patient_study_and_body_part_like_the_sr(dx_image, provenance):
    source = copy.deepcopy(dx_image)
    source.BodyPartExamined = "HAND"
    started = datetime(2026, 2, 3, 4, 5, 6)
    back = _roundtrip(secondary_capture(source, _overlay(32, 24), provenance=provenance,
                                        series_instance_uid=generate_uid(), series_number=3, series_datetime=started,
                                        series_description="AI key images", description="Nodule 2 key image"))
    for keyword in ("StudyDescription", "IssuerOfPatientID", "PatientAge", "BodyPartExamined", "StudyDate",
                    "PatientBirthDate", "AccessionNumber"):
        assert back[keyword].value == source[keyword].value, keyword
    assert (back.SeriesDate, back.SeriesTime) == ("20260203", "040506")
    assert back.ContentDate >= back.SeriesDate
    assert back.SeriesDescription == "AI key images" and back.DerivationDescription.endswith("Nodule 2 key image")


def test_secondary_capture_of_an_unpaired_body_part_has_no_laterality(ct_series, provenance):
    source = ct_series[0]
    source.BodyPartExamined = "CHEST"
    assert "Laterality" in source and not source.Laterality  # present and empty in the source
    sc = secondary_capture(source, _overlay(16, 20), provenance=provenance, series_instance_uid=generate_uid(),
                           series_number=3, description="key image", paired_body_part=False)
    assert "Laterality" not in sc and "ImageLaterality" not in sc
    paired = secondary_capture(source, _overlay(16, 20), provenance=provenance, series_instance_uid=generate_uid(),
                               series_number=3, description="key image")
    assert "Laterality" in paired and not paired.Laterality  # a paired part of unknown side: empty
    if validate.available():
        assert not [w for w in validate.dciodvfy(sc).warnings if "Laterality" in w]
