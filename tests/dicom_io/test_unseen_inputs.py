"""Inputs from outside the project's own writers: odd zips and part names, other encoders' quirks, odd headers.

Each case once ended in an unhandled exception (a 500, or a job failed as an internal error), silently lost or
wrong data, or a misleading rejection.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid as uids
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut
from pydicom.sequence import Sequence

from api.upload import split_multipart
from dicom_io.archive import unpack
from dicom_io.errors import DecodeError, InputRejected, NotDicomError, UnsupportedInputError
from dicom_io.image2d import load_image2d
from dicom_io.reader import read_headers
from dicom_io.synthetic import write_ct_series, write_projection_image
from dicom_io.volume import build_volume

LUMA = np.array([0.299, 0.587, 0.114])
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom and zipfile warn on these inputs


def _zip(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def _edit(paths: list[Path], **values: object) -> list[Path]:
    """Set (or, for None, delete) top-level values in every file, in place."""
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(path)
    return paths


def _patch(path: Path, old: bytes, new: bytes) -> None:
    """Replace a value's bytes (same length) to write what pydicom refuses to write, e.g. a DS of 'abc '."""
    data = path.read_bytes()
    assert len(old) == len(new) and data.count(old) == 1
    path.write_bytes(data.replace(old, new))


def _projection(tmp_path: Path, **values: object) -> Path:
    path = write_projection_image(np.arange(16 * 20, dtype=np.uint16).reshape(16, 20) % 4000, tmp_path / "dx.dcm")
    return _edit([path], **values)[0]


def _image(path: Path, limits):
    return load_image2d(read_headers([path], limits).series[0].instances[0], limits)


def _volume(paths: list[Path], limits):
    return build_volume(read_headers(paths, limits).series[0], limits)


# -- archives and uploads ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("names", [
    pytest.param(lambda n: "slice.dcm", id="every-entry-the-same-name"),
    pytest.param(lambda n: "a/x.dcm" if n < 2 else f"b/{n}.dcm", id="same-name-twice"),
    pytest.param(lambda n: ("a/x.dcm", "a\\x.dcm")[n] if n < 2 else f"{n}.dcm", id="slash-and-backslash"),
])
def test_zip_entries_with_the_same_name_are_all_kept(tmp_path: Path, small_ct_series, limits, names) -> None:
    archive = _zip(tmp_path / "s.zip", [(names(n), p.read_bytes()) for n, p in enumerate(small_ct_series)])
    files = unpack([archive], tmp_path / "out", limits)
    assert len(set(files)) == len(small_ct_series)
    volume = build_volume(read_headers(files, limits).series[0], limits)
    assert volume.array.shape[0] == len(small_ct_series)


def test_zip_entry_names_too_long_or_clashing_with_a_folder_are_extracted(tmp_path: Path, small_ct_series,
                                                                           limits) -> None:
    entries = [("n" * 300 + p.name, p.read_bytes()) for p in small_ct_series[:-2]]
    entries += [("a", small_ct_series[-2].read_bytes()), ("a/b.dcm", small_ct_series[-1].read_bytes())]
    files = unpack([_zip(tmp_path / "s.zip", entries)], tmp_path / "out", limits)
    assert len(files) == len(small_ct_series)
    assert all(len(p.name.encode()) <= 128 and not p.name.startswith(".") for p in files)
    assert files[0].name.endswith(small_ct_series[0].name)
    assert len(read_headers(files, limits).series[0].instances) == len(small_ct_series)


def _multipart(names: list[str], payload: bytes) -> bytes:
    parts = [b"--B\r\nContent-Disposition: form-data; name=\"files\"; filename=\"" + name.encode() + b"\"\r\n"
             b"Content-Type: application/dicom\r\n\r\n" + payload + b"\r\n" for name in names]
    return b"".join(parts) + b"--B--\r\n"


def test_multipart_part_names_dot_dotdot_and_hidden_are_kept_as_files(tmp_path: Path, limits) -> None:
    body = tmp_path / "body"
    body.write_bytes(_multipart(["..", ".", ".hidden.dcm", "../../x/.."], b"DATA"))
    parts = split_multipart(body, "multipart/form-data; boundary=B", tmp_path / "parts", 10)
    assert [p.name for p in parts] == ["file", "file", "hidden.dcm", "file"]
    assert all(p.is_file() and p.read_bytes() == b"DATA" and (tmp_path / "parts") in p.parents for p in parts)
    assert unpack(parts, tmp_path / "out", limits) == parts  # none is skipped as hidden


# -- header pass -------------------------------------------------------------------------------------------------


def test_files_that_are_not_dicom_beside_a_study_are_skipped(tmp_path: Path, small_ct_series, limits) -> None:
    folder = small_ct_series[0].parent
    (folder / "README.txt").write_text("Burned by SomeViewer 2.1; open index.html\n")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(range(256)) * 4)
    archive = shutil.make_archive(str(tmp_path / "cd"), "zip", folder)
    files = unpack([Path(archive)], tmp_path / "out", limits)
    study = read_headers(files, limits)
    assert len(study.series[0].instances) == len(small_ct_series)
    assert sorted(s.filename for s in study.skipped) == ["README.txt", "Thumbs.db"]
    assert all(s.reason == "not a DICOM file" for s in study.skipped)


def test_only_foreign_files_empty_files_and_raw_datasets_are_still_rejected(tmp_path: Path, small_ct_series,
                                                                            limits) -> None:
    readme = tmp_path / "README.txt"
    readme.write_text("not an image\n" * 20)
    with pytest.raises(NotDicomError, match="README.txt: no file meta: the bytes are not DICOM") as caught:
        read_headers([readme], limits)
    assert caught.value.status == 415
    empty = tmp_path / "lost.dcm"
    empty.write_bytes(b"")
    with pytest.raises(NotDicomError, match="lost.dcm: the file is empty"):
        read_headers([*small_ct_series, empty], limits)
    zeros = tmp_path / "zeros.dcm"
    zeros.write_bytes(bytes(100))  # a slice cut off inside its preamble
    with pytest.raises(NotDicomError, match="zeros.dcm: no file meta"):
        read_headers([*small_ct_series, zeros], limits)
    raw = tmp_path / "raw.dcm"
    raw.write_bytes(small_ct_series[0].read_bytes()[132:])  # file meta group first, no preamble
    with pytest.raises(NotDicomError, match="raw.dcm: no file meta: .*raw dataset"):
        read_headers([*small_ct_series[1:], raw], limits)


@pytest.mark.parametrize(("keyword", "tag"), [("SOPInstanceUID", "(0008,0018)"), ("SOPClassUID", "(0008,0016)")])
def test_image_without_sop_uids_is_rejected_in_the_header_pass(small_ct_series, limits, keyword, tag) -> None:
    _edit(small_ct_series[2:3], **{keyword: None})
    with pytest.raises(InputRejected, match=re.escape(f"{small_ct_series[2].name}: {keyword} {tag} is missing")):
        read_headers(small_ct_series, limits)


@pytest.mark.parametrize("bits_stored", [0, 17])
def test_bits_stored_outside_1_to_bits_allocated_is_rejected(small_ct_series, limits, bits_stored) -> None:
    _edit(small_ct_series[:1], BitsStored=bits_stored, HighBit=max(bits_stored - 1, 0))
    with pytest.raises(DecodeError, match=f"BitsStored \\(0028,0101\\) = {bits_stored} is not between 1 and "
                                          "BitsAllocated = 16"):
        read_headers(small_ct_series, limits)


def test_missing_rows_says_missing(small_ct_series, limits) -> None:
    _edit(small_ct_series[:1], Rows=None)
    with pytest.raises(DecodeError, match=r"Rows \(0028,0010\) is missing or empty"):
        read_headers(small_ct_series, limits)


# -- decoding and values -----------------------------------------------------------------------------------------


def test_implicit_vr_dataset_under_an_explicit_jpeg_syntax_decodes(limits) -> None:
    path = Path(get_testdata_file("SC_rgb_jpeg.dcm"))  # highdicom 0.1.0 wrote implicit VR under JPEG Baseline
    image = _image(path, limits)
    reference = pydicom.dcmread(path).pixel_array.astype(np.float64) @ LUMA
    np.testing.assert_allclose(image.array, reference, atol=1e-3)


def test_palette_color_is_mapped_through_the_palette(limits) -> None:
    path = Path(get_testdata_file("examples_palette.dcm"))
    ds = pydicom.dcmread(path)
    image = _image(path, limits)
    np.testing.assert_allclose(image.array, apply_color_lut(ds.pixel_array, ds).astype(np.float64) @ LUMA,
                               rtol=1e-5)
    with pytest.raises(UnsupportedInputError, match="PALETTE COLOR: palette indices are not intensities"):
        _volume([path], limits)


@pytest.mark.parametrize(("slope", "intercept", "expected"), [
    ("", "-1024", lambda s: s - 1024.0),  # pydicom's own rescale raised TypeError on the empty slope
    (None, "-1024", lambda s: s - 1024.0),  # pydicom's ignored an intercept without a slope; the volume does not
])
def test_image2d_rescale_with_empty_or_missing_slope_matches_the_volume(tmp_path: Path, limits, slope, intercept,
                                                                        expected) -> None:
    path = _projection(tmp_path, RescaleSlope=slope, RescaleIntercept=intercept)
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    np.testing.assert_allclose(_image(path, limits).array, expected(stored))
    np.testing.assert_allclose(_volume([path], limits).array[0], expected(stored))


@pytest.mark.parametrize(("values", "says"), [
    ({"RescaleSlope": ["1", "1"]}, r"RescaleSlope \(0028,1053\) has the invalid value"),
    ({"RescaleSlope": "NaN"}, r"RescaleSlope \(0028,1053\) has the invalid value"),
    ({"RescaleSlope": "0"}, r"RescaleSlope \(0028,1053\)"),
    ({"RescaleSlope": "1", "RescaleIntercept": "1e300"}, r"RescaleIntercept \(0028,1052\) has the invalid value"),
])
def test_invalid_rescale_is_a_decode_error_for_images_and_volumes(tmp_path: Path, limits, values, says) -> None:
    path = _projection(tmp_path, **values)
    with pytest.raises(DecodeError, match=says):
        _image(path, limits)
    with pytest.raises(DecodeError, match=says):
        _volume([path], limits)


def test_malformed_modality_lut_sequence_is_a_decode_error(tmp_path: Path, limits) -> None:
    item = Dataset()
    item.ModalityLUTType = "OD"  # no LUTDescriptor, no LUTData
    path = _projection(tmp_path, ModalityLUTSequence=Sequence([item]))
    with pytest.raises(DecodeError, match=r"ModalityLUTSequence \(0028,3000\) is malformed"):
        _image(path, limits)
    with pytest.raises(DecodeError, match=r"ModalityLUTSequence \(0028,3000\) is malformed"):
        _volume([path], limits)


def test_single_pixel_spacing_value_is_ignored_for_a_projection(tmp_path: Path, limits) -> None:
    path = _projection(tmp_path, PixelSpacing="0.2", ImagerPixelSpacing=None)
    assert _image(path, limits).pixel_spacing is None


@pytest.mark.parametrize(("keyword", "tag"), [("SliceThickness", "0018,0050"), ("SpacingBetweenSlices", "0018,0088")])
def test_lone_slice_with_malformed_slice_step_is_a_decode_error(tmp_path: Path, limits, keyword, tag) -> None:
    path = write_ct_series(np.zeros((1, 8, 8)), tmp_path / "one", tags={keyword: "7.25"})[0]
    _patch(path, b"7.25", b"7.\xff ")
    with pytest.raises(DecodeError, match=rf"{keyword} \({tag}\) has the invalid value"):
        _volume([path], limits)


@pytest.mark.parametrize("signed", [False, True])
def test_bits_above_bits_stored_in_a_compressed_stream_are_dropped(tmp_path: Path, limits, signed) -> None:
    """dcmcjpls compresses BitsStored 12 data with garbage in bits 12-15 as a 16-bit JPEG-LS stream."""
    hu = np.random.default_rng(5).integers(-1000, 1000, (3, 8, 10)).astype(np.float64)
    paths = write_ct_series(hu, tmp_path / "ct")
    for path in paths:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.astype(np.int32) - (1024 if signed else 0)  # signed: values -1000..999
        garbage = ((stored & 0x0FFF) | 0x5000).astype(np.uint16)
        ds.PixelRepresentation = int(signed)
        ds.BitsStored, ds.HighBit = 16, 15
        ds.compress(uids.JPEGLSLossless, garbage.view(np.int16) if signed else garbage, generate_instance_uid=False)
        ds.BitsStored, ds.HighBit = 12, 11
        ds.save_as(path)
    expected = hu - 1024 if signed else hu  # the intercept stays -1024
    np.testing.assert_array_equal(_volume(paths, limits).array, expected)
    np.testing.assert_array_equal(_image(paths[0], limits).array, expected[0])


def test_zip_entries_named_like_the_numbered_folders_do_not_collide(tmp_path: Path) -> None:
    """A repeated name goes to a numbered folder; an entry already holding that folder's name must not block it."""
    import zipfile

    from dicom_io.archive import unpack
    from dicom_io.limits import Limits

    archive = tmp_path / "odd.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("x.dcm", b"first")
        zf.writestr("00002", b"second")  # the name the next entry's numbered folder would get
        zf.writestr("a/x.dcm", b"third")  # entry 2, a repeated name
        zf.writestr("X.DCM", b"fourth")  # the same name on a case-insensitive file system
    files = unpack([archive], tmp_path / "out", Limits())
    assert sorted(p.read_bytes() for p in files) == [b"first", b"fourth", b"second", b"third"]
    assert len({p.resolve() for p in files}) == 4


def test_decoder_failures_are_told_in_one_short_line_without_object_addresses() -> None:
    from dicom_io.codecs import _decoder_reason

    exc = RuntimeError("Unable to decode:\n  pylibjpeg: failed\n  pillow: cannot identify image file "
                       "<_io.BytesIO object at 0x7f2eed093510>" + " more" * 200)
    reason = _decoder_reason(exc)
    assert "\n" not in reason and "0x7f2eed093510" not in reason and "<...>" in reason
    assert len(reason) <= 300 and reason.endswith("...")


def _jpeg_baseline(pixels: np.ndarray) -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.mark.parametrize("syntax", [uids.JPEGBaseline8Bit, uids.JPEGLSLossless, uids.JPEG2000Lossless],
                         ids=["jpeg", "jpeg-ls", "jpeg2000"])
def test_codestream_larger_than_rows_and_columns_is_refused_before_decoding(tmp_path: Path, limits,
                                                                             syntax) -> None:
    """A decompression bomb: the DICOM header passes the size limits, the codestream inside is far larger."""
    path = write_projection_image(np.zeros((32, 24)), tmp_path / "small.dcm")
    ds = pydicom.dcmread(path)
    big = np.random.default_rng(1).integers(0, 200, (480, 360)).astype(np.uint16)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = big.shape
    if syntax == uids.JPEGBaseline8Bit:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([_jpeg_baseline(big)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        ds.compress(syntax, big.astype(np.uint8), generate_instance_uid=False)
    ds.Rows, ds.Columns = 32, 24  # what the header pass and the limits see
    ds.save_as(path)
    with pytest.raises(DecodeError, match=r"codestream holds 480 x 360 pixels .* say 32 x 24 x 1"):
        _image(path, limits)
    ds.Rows, ds.Columns = 480, 360  # the honest header decodes
    ds.save_as(path)
    assert _image(path, limits).array.shape == (480, 360)


def test_two_images_sharing_a_sop_instance_uid_are_named_not_reported_as_a_missing_slice(small_ct_series,
                                                                                          limits) -> None:
    paths = small_ct_series
    ds = pydicom.dcmread(paths[4])
    ds.SOPInstanceUID = pydicom.dcmread(paths[3]).SOPInstanceUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(paths[4])
    with pytest.raises(InputRejected, match=rf"{paths[3].name} and {paths[4].name} share one SOPInstanceUID but "
                                            r"are different images \(ImagePositionPatient, InstanceNumber differ\)"):
        read_headers(paths, limits)


def test_the_same_image_sent_twice_is_used_once(tmp_path: Path, small_ct_series, limits) -> None:
    again = tmp_path / "again.dcm"
    shutil.copy(small_ct_series[2], again)
    study = read_headers([*small_ct_series, again], limits)
    assert len(study.series[0].instances) == len(small_ct_series)


def test_our_own_results_sent_back_with_the_study_are_skipped(tmp_path: Path, small_ct_series, limits) -> None:
    """PACS routing rules forward whole studies: radinfer's SEG/SR/SC among them are never analysed again."""
    result = pydicom.dcmread(small_ct_series[0])
    result.Manufacturer = "radinfer"
    result.SeriesInstanceUID = result.SOPInstanceUID = pydicom.uid.generate_uid()
    result.file_meta.MediaStorageSOPInstanceUID = result.SOPInstanceUID
    result.save_as(tmp_path / "ours.dcm")
    study = read_headers([*small_ct_series, tmp_path / "ours.dcm"], limits)
    assert [len(s.instances) for s in study.series] == [len(small_ct_series)]
    assert [(s.filename, s.reason) for s in study.skipped] == [("ours.dcm",
                                                               "a radinfer result (results are not analysed)")]
