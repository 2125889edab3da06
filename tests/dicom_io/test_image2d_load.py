"""Projection images: modality LUT, MONOCHROME1 inversion, VOI window to uint8, pixel spacing fallbacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid as uids
import pytest
from pydicom.data import get_testdata_file

from dicom_io.errors import UnsupportedInputError
from dicom_io.image2d import load_image2d
from dicom_io.reader import read_header
from dicom_io.synthetic import write_projection_image

GRADIENT = np.tile(np.linspace(0, 4095, 64).round(), (48, 1))


def _load(path: Path, limits):
    return load_image2d(read_header(path, limits), limits)


@pytest.mark.parametrize(("modality", "photometric", "transfer_syntax"), [
    ("DX", "MONOCHROME2", uids.ExplicitVRLittleEndian),
    ("CR", "MONOCHROME1", uids.ExplicitVRLittleEndian),
    ("MG", "MONOCHROME1", uids.JPEGLSLossless),
    ("MG", "MONOCHROME2", uids.JPEG2000Lossless),
    ("DX", "MONOCHROME2", uids.RLELossless),
], ids=lambda v: getattr(v, "name", v))
def test_load_image2d_larger_is_brighter_after_round_trip(tmp_path: Path, modality, photometric, transfer_syntax,
                                                          limits) -> None:
    path = write_projection_image(GRADIENT, tmp_path / "img.dcm", modality=modality, photometric=photometric,
                                  pixel_spacing=(0.1, 0.2), transfer_syntax=transfer_syntax)
    image = _load(path, limits)
    np.testing.assert_array_equal(image.array, GRADIENT.astype(np.float32))
    assert image.array.dtype == np.float32 and image.display.dtype == np.uint8
    assert image.display[0, 0] < 10 and image.display[0, -1] > 245, "bright end of the gradient must display bright"
    assert np.all(np.diff(image.display[0].astype(int)) >= 0)
    assert image.pixel_spacing == (0.1, 0.2)
    assert image.photometric_interpretation == photometric
    assert image.ref.sop_instance_uid == str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_load_image2d_applies_rescale_and_window(tmp_path: Path, limits) -> None:
    path = write_projection_image(GRADIENT, tmp_path / "img.dcm",
                                  tags={"RescaleSlope": "2", "RescaleIntercept": "-100", "WindowCenter": "4000",
                                        "WindowWidth": "2000"})
    image = _load(path, limits)
    np.testing.assert_allclose(image.array, GRADIENT * 2 - 100)
    below = image.array < 3000
    above = image.array > 5000
    assert np.all(image.display[below] == 0) and np.all(image.display[above] == 255)


def test_load_image2d_voi_lut_sequence_used_for_display(tmp_path: Path, limits) -> None:
    path = write_projection_image(GRADIENT, tmp_path / "img.dcm")
    ds = pydicom.dcmread(path)
    del ds.WindowCenter, ds.WindowWidth
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "US", list(range(4095, -1, -1)))  # an inverting LUT
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    image = _load(path, limits)
    assert image.display[0, 0] == 255 and image.display[0, -1] == 0


def test_load_image2d_missing_pixel_spacing_falls_back_then_none(tmp_path: Path, limits) -> None:
    path = write_projection_image(GRADIENT, tmp_path / "img.dcm", modality="CR", pixel_spacing=(0.3, 0.3))
    ds = pydicom.dcmread(path)
    del ds.PixelSpacing
    ds.save_as(path)
    assert _load(path, limits).pixel_spacing == (0.3, 0.3)
    del ds.ImagerPixelSpacing
    ds.save_as(path)
    assert _load(path, limits).pixel_spacing is None


def test_load_image2d_without_window_uses_percentiles(tmp_path: Path, limits) -> None:
    path = write_projection_image(GRADIENT, tmp_path / "img.dcm")
    ds = pydicom.dcmread(path)
    del ds.WindowCenter, ds.WindowWidth
    ds.save_as(path)
    image = _load(path, limits)
    assert image.display.min() == 0 and image.display.max() == 255


def test_load_image2d_rgb_secondary_capture_to_luminance(limits) -> None:
    path = Path(get_testdata_file("SC_rgb_rle.dcm"))
    image = _load(path, limits)
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float32)
    assert image.array.shape == (100, 100) and image.display.dtype == np.uint8
    np.testing.assert_allclose(image.array, rgb @ np.array([0.299, 0.587, 0.114], np.float32), rtol=1e-5)


def test_load_image2d_multiframe_rejected(limits) -> None:
    with pytest.raises(UnsupportedInputError, match="SC_rgb_rle_2frame.dcm: NumberOfFrames"):
        _load(Path(get_testdata_file("SC_rgb_rle_2frame.dcm")), limits)
