"""Decoding pydicom's own test files across transfer syntaxes, compared with their uncompressed originals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid as uids
import pytest
from pydicom.data import get_testdata_file

from dicom_io import codecs
from dicom_io.codecs import available_decoders, decode_frames
from dicom_io.errors import DecodeError
from dicom_io.reader import read_header

# (file, reference file or None, exact match?) - reference is the same image in another transfer syntax.
REFERENCE_TABLE = [
    ("MR_small.dcm", None, True),
    ("MR_small_implicit.dcm", "MR_small.dcm", True),
    ("MR_small_bigendian.dcm", "MR_small.dcm", True),
    ("MR_small_expb.dcm", "MR_small.dcm", True),
    ("MR_small_padded.dcm", "MR_small.dcm", True),
    ("MR_small_RLE.dcm", "MR_small.dcm", True),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", True),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm", True),
    ("CT_small.dcm", None, True),
    ("image_dfl.dcm", None, True),
    ("rtdose.dcm", None, True),
    ("rtdose_expb.dcm", "rtdose.dcm", True),
    ("rtdose_rle.dcm", "rtdose.dcm", True),
    ("liver_expb_1frame.dcm", "liver_1frame.dcm", True),
    ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm", True),
    ("SC_rgb_rle_2frame.dcm", None, True),
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", True),
    ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm", False),
    ("SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_rle.dcm", False),
    ("SC_rgb_gdcm_KY.dcm", "SC_rgb_rle.dcm", False),
    ("SC_rgb_jls_lossy_line.dcm", "SC_rgb_rle.dcm", False),
    ("JPGExtended.dcm", None, True),
    ("JPEGLSNearLossless_16.dcm", None, True),
    ("JPEG2000.dcm", None, True),
    ("693_J2KI.dcm", None, True),
    ("examples_ybr_color.dcm", None, True),
]


def _decode(name: str, limits) -> tuple[np.ndarray, object]:
    header = read_header(Path(get_testdata_file(name)), limits)
    return decode_frames(header, limits), header


@pytest.mark.parametrize(("name", "reference", "exact"), REFERENCE_TABLE, ids=[row[0] for row in REFERENCE_TABLE])
def test_decode_pydicom_file_matches_reference(name: str, reference: str | None, exact: bool, limits) -> None:
    arr, header = _decode(name, limits)
    ds = header.dataset
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.SamplesPerPixel)
    expected_shape = (frames, int(ds.Rows), int(ds.Columns)) + ((spp,) if spp > 1 else ())
    assert arr.shape == expected_shape
    assert arr.dtype.kind in "uif"
    assert np.ptp(arr.astype(np.float64)) > 0, "decoded image should not be constant"
    if reference is None:
        return
    ref, _ = _decode(reference, limits)
    assert arr.shape == ref.shape
    if exact:
        np.testing.assert_array_equal(arr, ref)
    else:
        diff = np.abs(arr.astype(np.float64) - ref.astype(np.float64))
        assert diff.mean() < 4.0, f"lossy decode differs by {diff.mean():.2f} on average"


def test_native_fast_path_matches_pydicom_for_stored_bits_below_allocated(tmp_path: Path, limits) -> None:
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.BitsStored, ds.HighBit = 12, 11
    raw = np.frombuffer(ds.PixelData, dtype="<i2").copy()
    raw[:4] = [0x7FFF, -1, 0x0800, 0x07FF]
    ds.PixelData = raw.tobytes()
    path = tmp_path / "ct12.dcm"
    ds.save_as(path)
    arr = decode_frames(read_header(path, limits), limits)[0]
    np.testing.assert_array_equal(arr, pydicom.dcmread(path).pixel_array)


def test_decode_corrupt_jpeg_stream_raises_decode_error(limits) -> None:
    # pydicom documents JPEG-lossy.dcm as a broken JPEG Extended stream (JPGExtended.dcm is the fixed copy).
    with pytest.raises(DecodeError, match="JPEG-lossy.dcm: pixel data in JPEG Extended"):
        _decode("JPEG-lossy.dcm", limits)


def test_available_decoders_reports_registry_state() -> None:
    decoders = available_decoders()
    assert decoders[uids.ExplicitVRLittleEndian.name] is True
    assert decoders[uids.RLELossless.name] is True
    assert decoders[uids.JPEGLSLossless.name] is True
    assert decoders[uids.JPEG2000Lossless.name] is True
    assert decoders[uids.MPEG2MPML.name] is False
    assert set(decoders) == {str(ts.name) for ts in uids.AllTransferSyntaxes}


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_implicit.dcm", "CT_small.dcm", "rtdose.dcm"])
def test_native_little_endian_pixels_are_read_straight_from_the_file(name: str, limits) -> None:
    """The np.fromfile path is taken for native little-endian monochrome data, and agrees with pydicom."""
    header = read_header(Path(get_testdata_file(name)), limits)
    fast = codecs._native_frames(header)
    assert fast is not None
    expected = pydicom.dcmread(header.path).pixel_array
    np.testing.assert_array_equal(fast, expected.reshape(fast.shape))
