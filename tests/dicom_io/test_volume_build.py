"""Volume building: geometry round trips, ordering independence, codecs, multi-frame, geometry errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid as uids
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_io.adversarial import sphere_phantom
from dicom_io.errors import GeometryError
from dicom_io.reader import read_headers
from dicom_io.synthetic import write_ct_series
from dicom_io.volume import build_volume

SHAPE = (12, 24, 20)
CENTER = (5, 9, 13)
C30, S30 = np.cos(np.pi / 6), np.sin(np.pi / 6)

GEOMETRIES = [
    ("axial_offset_origin_anisotropic", {"spacing": (2.5, 0.7, 0.9), "origin": (-87.3, 112.0, -401.5)}),
    ("flipped_rows_and_columns", {"spacing": (1.5, 0.8, 0.8), "origin": (10.0, 20.0, 30.0),
                                      "row_direction": (-1, 0, 0), "column_direction": (0, -1, 0)}),
    ("double_oblique", {"spacing": (3.0, 1.1, 0.6), "origin": (5.0, -7.0, 12.0),
                                "row_direction": (C30, S30, 0), "column_direction": (-S30 * 0.6, C30 * 0.6, -0.8)}),
    ("sagittal", {"spacing": (2.0, 1.0, 1.2), "origin": (-40.0, -60.0, 80.0),
                      "row_direction": (0, 1, 0), "column_direction": (0, 0, -1)}),
]


def _volume(paths: list[Path], limits):
    study = read_headers(paths, limits)
    assert len(study.series) == 1
    return build_volume(study.series[0], limits)


def _expected_lps(geometry: dict, kji: tuple[int, int, int]) -> np.ndarray:
    row = np.asarray(geometry.get("row_direction", (1, 0, 0)), float)
    col = np.asarray(geometry.get("column_direction", (0, 1, 0)), float)
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    sk, sj, si = geometry["spacing"]
    k, j, i = kji
    return np.asarray(geometry["origin"]) + k * sk * np.cross(row, col) + j * sj * col + i * si * row


@pytest.mark.parametrize("geometry", [g for _, g in GEOMETRIES], ids=[n for n, _ in GEOMETRIES])
def test_build_volume_sphere_lands_at_expected_lps(tmp_path: Path, geometry: dict, limits) -> None:
    hu = sphere_phantom(SHAPE, CENTER, 3.0)
    volume = _volume(write_ct_series(hu, tmp_path, shuffle=True, **geometry), limits)
    assert volume.array.dtype == np.float32 and volume.shape == SHAPE
    assert volume.spacing == pytest.approx(geometry["spacing"], abs=1e-6)
    center_lps = _expected_lps(geometry, CENTER)
    kji = np.rint(volume.lps_to_index(center_lps)).astype(int)
    assert volume.array[tuple(kji)] == pytest.approx(400.0)
    found = np.argwhere(volume.array > 0).mean(axis=0)
    np.testing.assert_allclose(volume.index_to_lps(found), center_lps, atol=1e-3)
    np.testing.assert_array_equal(volume.array, hu)
    assert volume.array.min() == pytest.approx(-1000.0)


def test_build_volume_ignores_file_order_and_instance_numbers(tmp_path: Path, limits) -> None:
    hu = sphere_phantom(SHAPE, CENTER, 4.0) + np.arange(SHAPE[0])[:, None, None]  # every slice distinct
    geometry = {"spacing": (2.0, 0.5, 0.5), "origin": (1.0, 2.0, 3.0)}
    plain = _volume(write_ct_series(hu, tmp_path / "plain", **geometry), limits)
    shuffled = _volume(write_ct_series(hu, tmp_path / "shuffled", shuffle=True, **geometry), limits)
    reversed_ = _volume(write_ct_series(hu, tmp_path / "rev", reverse_instance_numbers=True, shuffle=True,
                                        **geometry), limits)
    for other in (shuffled, reversed_):
        np.testing.assert_array_equal(other.array, plain.array)
        np.testing.assert_allclose(other.affine, plain.affine)
    np.testing.assert_array_equal(plain.array, hu)
    sop_of_first = pydicom.dcmread(write_ct_series(hu[:1], tmp_path / "one")[0]).SOPClassUID
    assert plain.slice_refs[0].sop_class_uid == sop_of_first


@pytest.mark.parametrize("transfer_syntax", [
    uids.ImplicitVRLittleEndian, uids.ExplicitVRBigEndian, uids.DeflatedExplicitVRLittleEndian, uids.RLELossless,
    uids.JPEGLSLossless, uids.JPEG2000Lossless,
], ids=lambda ts: ts.name)
def test_build_volume_compressed_transfer_syntax_gives_same_volume(tmp_path: Path, transfer_syntax, limits) -> None:
    hu = sphere_phantom((4, 40, 36), (2, 20, 18), 8.0) + np.linspace(-50, 50, 36)[None, None, :].round()
    reference = _volume(write_ct_series(hu, tmp_path / "ref", spacing=(1.0, 0.5, 0.5)), limits)
    paths = write_ct_series(hu, tmp_path / "enc", spacing=(1.0, 0.5, 0.5), transfer_syntax=transfer_syntax)
    assert pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == transfer_syntax
    volume = _volume(paths, limits)
    np.testing.assert_array_equal(volume.array, reference.array)


def test_build_volume_applies_rescale_per_slice(tmp_path: Path, limits) -> None:
    hu = np.full((3, 8, 8), 100.0)
    paths = write_ct_series(hu, tmp_path)
    ds = pydicom.dcmread(paths[1])
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-2048"
    ds.PixelData = np.full((8, 8), (100 + 2048) // 2, dtype=np.int16).tobytes()
    ds.save_as(paths[1])
    volume = _volume(paths, limits)
    np.testing.assert_array_equal(volume.array, hu)


def test_build_volume_accepts_gantry_tilt_as_sheared_affine(tmp_path: Path, limits) -> None:
    paths = write_ct_series(np.zeros((5, 8, 8)), tmp_path, spacing=(2.0, 1.0, 1.0))
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0.0, 0.3 * k, 2.0 * k]
        ds.save_as(path)
    volume = _volume(paths, limits)
    np.testing.assert_allclose(volume.affine[:3, 0], [0.0, 0.3, 2.0])
    assert volume.spacing[0] == pytest.approx(2.0)


def _enhanced_ct(hu: np.ndarray, path: Path, spacing=(2.0, 0.5, 0.75), origin=(-10.0, 5.0, 100.0)) -> Path:
    """An Enhanced CT-like multi-frame file with per-frame positions, written in reversed frame order."""
    n = hu.shape[0]
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "CT"
    ds.NumberOfFrames = n
    ds.Rows, ds.Columns = hu.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = [spacing[1], spacing[2]]
    shared.PixelValueTransformationSequence = Sequence([Dataset()])
    shared.PixelValueTransformationSequence[0].RescaleSlope = 1
    shared.PixelValueTransformationSequence[0].RescaleIntercept = -1024
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    order = list(range(n))[::-1]
    for k in order:
        item = Dataset()
        item.PlanePositionSequence = Sequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[0]]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = (hu[order] + 1024).astype(np.int16).tobytes()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_build_volume_enhanced_multiframe_orders_frames_by_position(tmp_path: Path, limits) -> None:
    hu = sphere_phantom((6, 16, 16), (2, 8, 8), 3.0) + np.arange(6)[:, None, None]
    volume = _volume([_enhanced_ct(hu, tmp_path / "enh.dcm")], limits)
    np.testing.assert_array_equal(volume.array, hu)
    assert volume.spacing == pytest.approx((2.0, 0.5, 0.75))
    np.testing.assert_allclose(volume.affine[:3, 3], [-10.0, 5.0, 100.0])
    assert [ref.frame for ref in volume.slice_refs] == [6, 5, 4, 3, 2, 1]


def test_build_volume_classic_multiframe_uses_grid_frame_offsets(limits) -> None:
    path = Path(get_testdata_file("rtdose.dcm"))
    ds = pydicom.dcmread(path)
    volume = _volume([path], limits)
    assert volume.shape == (15, 10, 10)
    offsets = np.asarray(ds.GridFrameOffsetVector, float)
    assert volume.spacing[0] == pytest.approx(float(np.median(np.diff(offsets))))
    expected = ds.pixel_array.astype(np.float32) * np.float32(ds.DoseGridScaling)
    np.testing.assert_allclose(volume.array, expected, rtol=1e-6)


def _edit(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def _uneven(paths: list[Path]) -> list[Path]:
    _edit(paths[3], ImagePositionPatient=[0, 0, 3 * 2.0 + 0.7])
    return paths


def _missing(paths: list[Path]) -> list[Path]:
    return paths[:3] + paths[4:]


def _mixed_orientation(paths: list[Path]) -> list[Path]:
    _edit(paths[2], ImageOrientationPatient=[1, 0, 0, 0, C30, -S30])
    return paths


def _mixed_spacing(paths: list[Path]) -> list[Path]:
    _edit(paths[5], PixelSpacing=[1.0, 1.01])
    return paths


def _spacing_then_orientation(paths: list[Path]) -> list[Path]:
    """Slices sent in reverse: CT_00006 (spacing differs) comes before CT_00001 (orientation differs)."""
    _edit(paths[6], PixelSpacing=[1.01, 1.0])
    _edit(paths[1], ImageOrientationPatient=[1, 0, 0, 0, C30, -S30])
    return paths[::-1]


def _duplicate_position(paths: list[Path]) -> list[Path]:
    _edit(paths[4], ImagePositionPatient=[0, 0, 3 * 2.0])
    return paths


GEOMETRY_ERRORS = [
    ("uneven_spacing", _uneven, "uneven slice spacing: 2.700 mm between CT_00002.dcm and CT_00003.dcm"),
    ("missing_slice", _missing, r"missing slice: 4.000 mm between CT_00002.dcm and CT_00004.dcm .*1 slice"),
    ("mixed_orientation", _mixed_orientation, "mixed orientations in one series.*CT_00002.dcm"),
    ("mixed_spacing", _mixed_spacing, r"mixed PixelSpacing in one series: .* in CT_00000.dcm but .*1\.01.* in CT_00005"),
    ("first_difference_in_given_order", _spacing_then_orientation, "mixed PixelSpacing .* in CT_00006.dcm"),
    ("duplicate_position", _duplicate_position, "duplicate slice position: CT_0000[34].dcm and CT_0000[34].dcm"),
]


@pytest.mark.parametrize(("corrupt", "message"), [r[1:] for r in GEOMETRY_ERRORS], ids=[r[0] for r in GEOMETRY_ERRORS])
def test_build_volume_inconsistent_geometry_raises(tmp_path: Path, corrupt, message, limits) -> None:
    paths = write_ct_series(np.zeros((8, 8, 8)), tmp_path, spacing=(2.0, 1.0, 1.0))
    with pytest.raises(GeometryError, match=message):
        _volume(corrupt(paths), limits)


def test_build_volume_mixed_sizes_raises(tmp_path: Path, limits) -> None:
    study_uid, series_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    a = write_ct_series(np.zeros((2, 8, 8)), tmp_path / "a", study_uid=study_uid, series_uid=series_uid)
    b = write_ct_series(np.zeros((2, 8, 10)), tmp_path / "b", study_uid=study_uid, series_uid=series_uid,
                        origin=(0, 0, 4.0))
    with pytest.raises(GeometryError, match="mixed image sizes.*8x8.*8x10"):
        _volume(a + b, limits)


@pytest.mark.parametrize("tilt", [0.0, 5.0, 15.0])
def test_volume_reports_the_gantry_tilt_of_its_stack(tmp_path: Path, limits, tilt: float) -> None:
    paths = write_ct_series(np.zeros((6, 8, 10)), tmp_path / "ct", spacing=(2.0, 0.7, 0.7))
    for path in paths:  # each slice shifted along y by z * tan(tilt), as a tilted CT acquisition stores it
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + z * np.tan(np.radians(tilt)), z]
        ds.save_as(path)
    assert build_volume(read_headers(paths, limits).series[0], limits).tilt_deg == pytest.approx(tilt, abs=1e-6)
