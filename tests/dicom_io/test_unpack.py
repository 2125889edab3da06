"""Safe expansion of uploads: zips (bombs, traversal, symlinks, encryption, nesting), folders, DICOMDIR."""

from __future__ import annotations

import dataclasses
import io
import stat
import zipfile
from pathlib import Path

import pytest

from dicom_io.errors import LimitExceededError, UnsafeArchiveError
from dicom_io.limits import Limits
from dicom_io.reader import read_headers, unpack


def _zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]],
         compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("link.dcm")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _encrypted(path: Path) -> Path:
    _zip(path, [("a.dcm", b"x" * 100)], compression=zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set general purpose bit 0 (encrypted)
        at = raw.find(signature)
        raw[at + offset] |= 0x01
    path.write_bytes(bytes(raw))
    return path


def _inner_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("a.dcm", b"x")
    return buffer.getvalue()


BAD_ARCHIVES = [
    ("zip_bomb_ratio", lambda d: _zip(d / "bomb.zip", [("a.dcm", b"\0" * (40 << 20))]), UnsafeArchiveError,
     "bomb.zip: zip entry 'a.dcm' expands more than 200x"),
    ("dotdot_entry", lambda d: _zip(d / "evil.zip", [("../../etc/x.dcm", b"x")]), UnsafeArchiveError,
     r"'\.\./\.\./etc/x\.dcm' contains '\.\.'"),
    ("absolute_entry", lambda d: _zip(d / "abs.zip", [("/etc/x.dcm", b"x")]), UnsafeArchiveError,
     "absolute path"),
    ("windows_drive_entry", lambda d: _zip(d / "drive.zip", [("C:/x.dcm", b"x")]), UnsafeArchiveError,
     "absolute path"),
    ("symlink_entry", lambda d: _zip(d / "link.zip", [(_symlink_entry(), b"/etc/passwd")]), UnsafeArchiveError,
     "symbolic link"),
    ("encrypted_entry", lambda d: _encrypted(d / "enc.zip"), UnsafeArchiveError, "encrypted"),
    ("nested_zip", lambda d: _zip(d / "outer.zip", [("inner.zip", _inner_zip())]), UnsafeArchiveError,
     "nested archives are not supported"),
    ("malformed_zip", lambda d: _write(d / "broken.zip", b"PK\x03\x04" + b"\x01" * 200), UnsafeArchiveError,
     "malformed"),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("make", "error", "message"), [r[1:] for r in BAD_ARCHIVES], ids=[r[0] for r in BAD_ARCHIVES])
def test_unpack_unsafe_archive_rejected(tmp_path: Path, make, error, message, limits) -> None:
    archive = make(tmp_path)
    dest = tmp_path / "out"
    with pytest.raises(error, match=message):
        unpack([archive], dest, limits)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and dest not in p.parents and p != archive]
    assert outside == [], "nothing may be written outside the destination"


def test_unpack_zip_bomb_stops_at_unpacked_byte_limit(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "many.zip", [(f"{n}.dcm", bytes(range(256)) * 4096) for n in range(8)])
    limits = dataclasses.replace(Limits(), max_unpacked_bytes=3 << 20)
    with pytest.raises(LimitExceededError, match="exceed 3145728 unpacked bytes"):
        unpack([archive], tmp_path / "out", limits)


def test_unpack_too_many_entries_rejected_from_directory(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "many.zip", [(f"{n}.dcm", b"x") for n in range(6)])
    with pytest.raises(LimitExceededError, match="6 entries, more than the limit of 5"):
        unpack([archive], tmp_path / "out", Limits(max_zip_entries=5))


def test_unpack_zip_of_series_reads_like_the_files(tmp_path: Path, small_ct_series, limits) -> None:
    archive = _zip(tmp_path / "study.zip", [(f"series/{p.name}", p.read_bytes()) for p in small_ct_series]
                   + [("DICOMDIR", b"ignored"), ("__MACOSX/._x", b"junk"), (".DS_Store", b"junk")])
    files = unpack([archive], tmp_path / "out", limits)
    assert sorted(p.name for p in files) == sorted(p.name for p in small_ct_series)
    assert all((tmp_path / "out") in p.parents for p in files)
    study = read_headers(files, limits)
    assert len(study.series[0].instances) == len(small_ct_series)


def test_unpack_folder_walked_sorted_and_dicomdir_skipped(tmp_path: Path, small_ct_series, limits) -> None:
    folder = small_ct_series[0].parent
    (folder / "DICOMDIR").write_bytes(b"not used")
    files = unpack([folder], tmp_path / "out", limits)
    assert files == sorted(small_ct_series)


def test_unpack_symlink_in_folder_rejected(tmp_path: Path, small_ct_series, limits) -> None:
    folder = small_ct_series[0].parent
    (folder / "link.dcm").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="link.dcm: symbolic links"):
        unpack([folder], tmp_path / "out", limits)


def test_unpack_file_count_limit(tmp_path: Path, small_ct_series) -> None:
    with pytest.raises(LimitExceededError, match="more than 3 files"):
        unpack(small_ct_series, tmp_path / "out", Limits(max_files=3))


def test_unpack_streamed_zip_with_data_descriptors(tmp_path: Path, small_ct_series, limits) -> None:
    class Unseekable(io.RawIOBase):
        def __init__(self, target):
            self.target = target

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            return self.target.write(data)

    archive = tmp_path / "streamed.zip"
    with open(archive, "wb") as raw, zipfile.ZipFile(Unseekable(raw), "w", zipfile.ZIP_DEFLATED) as zf:
        for path in small_ct_series:
            with zf.open(path.name, "w") as entry:
                entry.write(path.read_bytes())
    files = unpack([archive], tmp_path / "out", limits)
    assert [p.read_bytes() for p in sorted(files)] == [p.read_bytes() for p in sorted(small_ct_series)]


def test_unpack_corrupt_entry_data_rejected(tmp_path: Path, limits) -> None:
    archive = _zip(tmp_path / "crc.zip", [("a.dcm", b"DICOM-ish payload " * 100)], compression=zipfile.ZIP_STORED)
    raw = bytearray(archive.read_bytes())
    raw[raw.find(b"DICOM-ish")] ^= 0xFF
    archive.write_bytes(bytes(raw))
    with pytest.raises(UnsafeArchiveError, match="crc.zip: zip entry 'a.dcm' could not be extracted .*CRC"):
        unpack([archive], tmp_path / "out", limits)
