"""Header pass: Part 10 checks, limits before decoding, truncation, bombs, nesting, studies, skipped instances."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid as uids
import pytest
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicom_io.adversarial import (
    deflate_bomb,
    image_dataset_bytes,
    meta_bytes,
    nested_sequence_file,
    pixel_element_header,
    raw_nested_sequence_file,
)
from dicom_io.errors import (
    DecodeError,
    InputRejected,
    LimitExceededError,
    NotDicomError,
    UnsupportedInputError,
)
from dicom_io.limits import Limits
from dicom_io.reader import read_header, read_headers
from dicom_io.synthetic import write_ct_series, write_projection_image


def _copy_testdata(name: str, dest: Path) -> Path:
    return Path(shutil.copy(get_testdata_file(name), dest / name))


def _raw_dataset_file(path: Path) -> Path:
    """CT_small's dataset written without preamble, 'DICM' or file meta (what some exporters produce)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    path.write_bytes(buffer.getvalue())
    return path


def _rows_columns_65535(path: Path) -> Path:
    path.write_bytes(meta_bytes(uids.ExplicitVRLittleEndian) + image_dataset_bytes(65535, 65535)
                     + pixel_element_header(8) + bytes(8))
    return path


def _unsupported_ts(path: Path) -> Path:
    path.write_bytes(meta_bytes(uids.MPEG2MPML) + image_dataset_bytes(8, 8) + pixel_element_header(0xFFFFFFFF))
    return path


BAD_FILES = [
    ("non_dicom_bytes", lambda d: _write(d / "notes.txt", b"hello, this is not DICOM\n" * 20), NotDicomError,
     "notes.txt: no file meta"),
    ("empty_file", lambda d: _write(d / "empty.dcm", b""), NotDicomError, "empty.dcm: the file is empty"),
    ("truncated_mr", lambda d: _copy_testdata("MR_truncated.dcm", d), DecodeError,
     "MR_truncated.dcm: PixelData is truncated"),
    ("no_file_meta", lambda d: _raw_dataset_file(d / "raw.dcm"), NotDicomError, "no file meta.*raw dataset"),
    ("pydicom_no_meta", lambda d: _copy_testdata("ExplVR_LitEndNoMeta.dcm", d), NotDicomError, "no file meta"),
    ("rows_columns_65535", lambda d: _rows_columns_65535(d / "huge.dcm"), LimitExceededError, r"Rows = 65535 exceeds the limit of 16384"),
    ("unsupported_transfer_syntax", lambda d: _unsupported_ts(d / "mpeg.dcm"), UnsupportedInputError, "MPEG2.*no pixel decoder"),
    ("deflate_bomb_zeros", lambda d: deflate_bomb(d / "bomb.dcm", b"", 4 << 30), DecodeError, "bomb.dcm: .*corrupt"),
    ("deflate_bomb_pixel_data", lambda d: deflate_bomb(d / "bomb.dcm", image_dataset_bytes()
                                                       + pixel_element_header(0xFFFFFFF0), 4 << 30),
     LimitExceededError, "deflate bomb"),
    ("sequence_nesting_50", lambda d: nested_sequence_file(d / "deep.dcm", 50), LimitExceededError,
     "ReferencedImageSequence is nested 13 levels deep"),
    ("sequence_nesting_5000_raw", lambda d: raw_nested_sequence_file(d / "deep.dcm", 5000), LimitExceededError,
     "nested deeper than 12"),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("make", "error", "message"), [row[1:] for row in BAD_FILES], ids=[r[0] for r in BAD_FILES])
def test_read_headers_bad_file_raises_specific_error(tmp_path: Path, make, error, message, limits) -> None:
    path = make(tmp_path)
    with pytest.raises(error, match=message) as info:
        read_headers([path], limits)
    assert isinstance(info.value, InputRejected)
    assert str(tmp_path) not in str(info.value), "messages name the file by basename only"


def test_read_headers_valid_series_records_pixel_location_without_pixels(small_ct_series, limits) -> None:
    study = read_headers(small_ct_series, limits)
    assert len(study.series) == 1
    series = study.series[0]
    assert len(series.instances) == 8
    for header in series.instances:
        assert "PixelData" not in header.dataset
        assert header.pixel is not None and header.pixel.length == 32 * 32 * 2
        assert header.dataset.file_meta.TransferSyntaxUID == uids.ExplicitVRLittleEndian


@pytest.mark.parametrize(("field", "value", "match"), [
    ("max_rows", 31, "Rows = 32 exceeds"),
    ("max_columns", 31, "Columns = 32 exceeds"),
    ("max_pixel_bytes_per_instance", 1000, "per-instance limit"),
    ("max_pixel_bytes_total", 32 * 32 * 2 * 3, "in total"),
    ("max_files", 4, "exceed the limit of 4"),
    ("max_sequence_depth", 0, "nested 1 levels deep"),
], ids=lambda v: str(v) if isinstance(v, str) else None)
def test_read_headers_each_limit_rejects_before_decoding(small_ct_series, field, value, match) -> None:
    limits = dataclasses.replace(Limits(), **{field: value})
    paths = small_ct_series
    if field == "max_sequence_depth":
        ds = pydicom.dcmread(paths[0])
        ds.ReferencedImageSequence = [pydicom.Dataset()]
        ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3"
        ds.save_as(paths[0])
    with pytest.raises(LimitExceededError, match=match):
        read_headers(paths, limits)


def test_read_headers_frames_limit(tmp_path: Path) -> None:
    path = _copy_testdata("rtdose.dcm", tmp_path)
    with pytest.raises(LimitExceededError, match="NumberOfFrames = 15 exceeds the limit of 4"):
        read_headers([path], Limits(max_frames=4))


def test_read_headers_two_studies_rejected(tmp_path: Path, limits) -> None:
    hu = np.zeros((2, 8, 8))
    first = write_ct_series(hu, tmp_path / "a")
    second = write_ct_series(hu, tmp_path / "b")
    with pytest.raises(InputRejected, match="send one study per request"):
        read_headers(first + second, limits)


def test_read_headers_non_image_instances_skipped(tmp_path: Path, small_ct_series, limits) -> None:
    study_uid = str(pydicom.dcmread(small_ct_series[0], stop_before_pixels=True).StudyInstanceUID)
    extra = []
    for name in ("test-SR.dcm", "rtplan.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.StudyInstanceUID = study_uid
        ds.save_as(tmp_path / name)
        extra.append(tmp_path / name)
    study = read_headers(small_ct_series + extra, limits)
    assert [s.filename for s in study.skipped] == ["test-SR.dcm", "rtplan.dcm"]
    assert all("no pixel data" in s.reason for s in study.skipped)
    assert "Basic Text SR" in study.skipped[0].reason or "SR" in study.skipped[0].reason
    assert sum(len(s.instances) for s in study.series) == 8


def test_read_headers_dicomdir_skipped(tmp_path: Path, limits) -> None:
    dicomdir = Path(get_testdata_file("DICOMDIR"))
    result = read_header(dicomdir, limits)
    assert result.reason.startswith("DICOMDIR")


def test_read_headers_groups_series_deterministically(tmp_path: Path, limits) -> None:
    hu = np.zeros((3, 8, 8))
    study_uid = pydicom.uid.generate_uid()
    a = write_ct_series(hu, tmp_path / "a", study_uid=study_uid, tags={"SeriesNumber": 2})
    b = write_ct_series(hu, tmp_path / "b", study_uid=study_uid, tags={"SeriesNumber": 1})
    dx = write_projection_image(np.zeros((8, 8)), tmp_path / "dx.dcm", tags={"StudyInstanceUID": study_uid,
                                                                              "SeriesNumber": 3})
    first = read_headers(a + [dx] + b, limits)
    second = read_headers(b[::-1] + a + [dx], limits)
    assert [s.series_instance_uid for s in first.series] == [s.series_instance_uid for s in second.series]
    assert [s.modality for s in first.series] == ["CT", "CT", "DX"]
    assert int(first.series[0].first.SeriesNumber) == 1


def test_read_headers_same_sop_instance_twice_is_dropped(tmp_path: Path, small_ct_series, limits) -> None:
    copy = tmp_path / "copy.dcm"
    shutil.copy(small_ct_series[0], copy)
    study = read_headers(small_ct_series + [copy], limits)
    assert len(study.series[0].instances) == 8
