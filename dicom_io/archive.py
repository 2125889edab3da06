"""Safe expansion of uploaded inputs (files, folders, zip archives) into a working folder.

Zip entries are inflated here (stored and deflate only) and every limit is enforced on the bytes actually produced,
never on the sizes the archive claims: entry count, total unpacked bytes, and the expansion ratio (per entry and for the archive, with a
1 MiB allowance so that small, very regular files such as blank slices are not rejected). Absolute paths, ``..``
components, drive letters, symlinks, encrypted entries and nested archives are rejected.
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from dicom_io.errors import LimitExceededError, NotDicomError, UnsafeArchiveError
from dicom_io.limits import Limits

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
RATIO_ALLOWANCE_BYTES = 1 << 20
_COPY_CHUNK = 1 << 20
_READ_CHUNK = 1 << 16
_IGNORED_PREFIXES = ("__MACOSX/",)
MAX_NAME_BYTES = 128
"""Extracted file names keep at most this many bytes (the end of the entry's base name, where suffixes are)."""


def unpack(inputs: list[Path], dest: Path, limits: Limits) -> list[Path]:
    """Expand ``inputs`` (DICOM files, zip archives, folders) into a deterministic list of candidate DICOM files.

    Zip archives are extracted under ``dest`` by base name (cut to MAX_NAME_BYTES), a repeated name into a numbered
    folder of its own, so that entries with the same name (zips may repeat a name, and ``a/x`` equals ``a\\x``),
    names too long for the file system, or a file and a folder of the same name never collide or overwrite one
    another; the archive's folders carry no meaning (series are grouped by UID). Plain files and folder contents
    are used in place. Files named DICOMDIR, hidden files and macOS resource forks are skipped (DICOMDIR content is
    found by walking the folder).
    """
    dest.mkdir(parents=True, exist_ok=True)
    budget = _Budget(limits)
    files: list[Path] = []
    for index, item in enumerate(inputs):
        item = Path(item)
        if item.is_symlink():
            raise UnsafeArchiveError("symbolic links are not accepted as input; send the files themselves",
                                     filename=item.name)
        if item.is_dir():
            candidates = _walk(item)
        elif item.is_file():
            candidates = [item]
        else:
            raise NotDicomError("input does not exist or is not a regular file", filename=item.name)
        for sub, path in enumerate(candidates):
            if is_zip(path):
                files.extend(_extract_zip(path, dest / f"zip{index:04d}_{sub:05d}", limits, budget))
            elif _wanted(path.name):
                budget.add_file(path.name)
                files.append(path)
    return files


def _walk(folder: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(root) / name
            if path.is_symlink():
                raise UnsafeArchiveError("symbolic links are not accepted inside input folders; copy the file",
                                         filename=name)
            found.append(path)
    return found


def _wanted(name: str) -> bool:
    return name.upper() != "DICOMDIR" and not name.startswith(".")


def is_zip(path: Path) -> bool:
    """Whether ``path`` is a zip archive (by its signature; a DICOM file's preamble may start like one)."""
    with open(path, "rb") as fp:
        head = fp.read(132)
    return head[:4] in ZIP_MAGIC and head[128:132] != b"DICM"


class _Budget:
    """Running totals over everything unpacked for one request."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.files = 0
        self.unpacked = 0

    def add_file(self, name: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise LimitExceededError(
                f"more than {self.limits.max_files} files in the request; send fewer files per request "
                "or raise RADINFER_MAX_FILES",
                filename=name,
            )

    def add_bytes(self, count: int, name: str) -> None:
        self.unpacked += count
        if self.unpacked > self.limits.max_unpacked_bytes:
            raise LimitExceededError(
                f"archive contents exceed {self.limits.max_unpacked_bytes} unpacked bytes; send a smaller study "
                "or raise RADINFER_MAX_UNPACKED_BYTES",
                filename=name,
            )


def _safe_relative(info: zipfile.ZipInfo, archive: str) -> PurePosixPath:
    raw = info.filename
    parts = PurePosixPath(raw.replace("\\", "/")).parts
    if raw.startswith(("/", "\\")) or (parts and len(parts[0]) == 2 and parts[0][1] == ":"):
        raise UnsafeArchiveError(f"zip entry '{raw}' has an absolute path; re-create the archive with relative "
                                 "paths", filename=archive)
    if ".." in parts or not parts:
        raise UnsafeArchiveError(f"zip entry '{raw}' contains '..' (path traversal); re-create the archive "
                                 "without parent-directory entries", filename=archive)
    return PurePosixPath(*parts)


def _extract_zip(archive: Path, target: Path, limits: Limits, budget: _Budget) -> list[Path]:
    name = archive.name
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeArchiveError(f"the zip archive is malformed ({exc}); re-create it", filename=name) from exc
    archive_size = max(archive.stat().st_size, 1)
    archive_out = 0
    out: list[Path] = []
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_zip_entries:
            raise LimitExceededError(
                f"the zip archive has {len(infos)} entries, more than the limit of {limits.max_zip_entries}; "
                "split the upload or raise RADINFER_MAX_ZIP_ENTRIES",
                filename=name,
            )
        used: set[str] = set()
        for info in infos:
            rel = _safe_relative(info, name)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafeArchiveError(f"zip entry '{info.filename}' is a symbolic link; archive the files "
                                         "themselves", filename=name)
            if info.flag_bits & 0x1:
                raise UnsafeArchiveError(f"zip entry '{info.filename}' is encrypted; send an unencrypted "
                                         "archive", filename=name)
            if info.is_dir() or rel.as_posix().startswith(_IGNORED_PREFIXES) or not _wanted(rel.name):
                continue
            budget.add_file(rel.name)
            path = _entry_path(target, _short_name(rel.name), len(out), used)
            if target.resolve() not in path.resolve().parents:
                raise UnsafeArchiveError(f"zip entry '{info.filename}' escapes the extraction folder",
                                         filename=name)
            path.parent.mkdir(parents=True, exist_ok=True)
            written = _copy_entry(archive, info, path, name, limits, budget)
            archive_out += written
            if archive_out > RATIO_ALLOWANCE_BYTES and archive_out / archive_size > limits.max_zip_ratio:
                raise UnsafeArchiveError(
                    f"the zip archive expands more than {limits.max_zip_ratio:g}x (zip bomb?); send the files "
                    "uncompressed or raise RADINFER_MAX_ZIP_RATIO",
                    filename=name,
                )
            out.append(path)
    return out


def _entry_path(target: Path, name: str, index: int, used: set[str]) -> Path:
    """``target/name`` for the first entry of a base name (compared without case: case-insensitive file systems
    would merge them), ``target/NNNNN/name`` for a later one. One flat folder keeps the staging cheap to fsync
    (a folder per entry cost ~0.1 s of directory syncs on a 220-slice study)."""
    if name.lower() not in used:
        used.add(name.lower())
        return target / name
    folder = f"{index:05d}"
    while folder in used:  # an entry may itself be named like a numbered folder
        folder += "_"
    used.add(folder)
    return target / folder / name


def _short_name(name: str) -> str:
    """The last MAX_NAME_BYTES bytes of ``name`` (file systems refuse names over 255 bytes), never hidden: the
    staged folder is walked again later, and hidden names are skipped there."""
    data = name.encode("utf-8")
    if len(data) <= MAX_NAME_BYTES:
        return name
    return data[-MAX_NAME_BYTES:].decode("utf-8", "ignore").lstrip(".") or "entry"


def _copy_entry(archive_path: Path, info: zipfile.ZipInfo, path: Path, archive: str, limits: Limits,
                budget: _Budget) -> int:
    """Stream one entry to disk, inflating it ourselves so the ratio is checked against the compressed bytes
    consumed so far (a bomb is stopped after about RATIO_ALLOWANCE_BYTES, not after its claimed size).
    Only stored and deflated entries are accepted; the CRC is verified. Returns the number of bytes written."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise UnsafeArchiveError(f"zip entry '{info.filename}' uses compression method {info.compress_type}; "
                                 "re-create the archive with standard deflate or stored entries", filename=archive)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS) if info.compress_type == zipfile.ZIP_DEFLATED else None
    written = consumed = crc = 0
    try:
        with open(archive_path, "rb") as src, open(path, "wb") as dst:
            src.seek(info.header_offset)
            local = src.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise zipfile.BadZipFile("bad local file header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            src.seek(info.header_offset + 30 + name_len + extra_len)
            remaining = info.compress_size
            while remaining > 0 or (inflater is not None and inflater.unconsumed_tail):
                if inflater is not None and inflater.unconsumed_tail:
                    data = inflater.unconsumed_tail
                else:
                    data = src.read(min(_READ_CHUNK, remaining))
                    if not data:
                        raise zipfile.BadZipFile("entry data ends early")
                    remaining -= len(data)
                    consumed += len(data)
                chunk = data if inflater is None else inflater.decompress(data, _COPY_CHUNK)
                if inflater is None:
                    data = b""
                if written == 0 and chunk[:4] in ZIP_MAGIC:
                    raise UnsafeArchiveError(
                        f"zip entry '{info.filename}' is itself a zip archive; nested archives are not supported, "
                        "extract the inner archive and send its files",
                        filename=archive,
                    )
                written += len(chunk)
                budget.add_bytes(len(chunk), archive)
                if written > RATIO_ALLOWANCE_BYTES and written > consumed * limits.max_zip_ratio:
                    raise UnsafeArchiveError(
                        f"zip entry '{info.filename}' expands more than {limits.max_zip_ratio:g}x its compressed "
                        "size (zip bomb?); send the files uncompressed or raise RADINFER_MAX_ZIP_RATIO",
                        filename=archive,
                    )
                crc = zlib.crc32(chunk, crc)
                dst.write(chunk)
            if inflater is not None:
                tail = inflater.flush()
                written += len(tail)
                budget.add_bytes(len(tail), archive)
                crc = zlib.crc32(tail, crc)
                dst.write(tail)
        if crc != info.CRC or written != info.file_size:
            raise zipfile.BadZipFile("CRC or size does not match the archive directory")
    except (zipfile.BadZipFile, zlib.error, OSError) as exc:
        path.unlink(missing_ok=True)
        raise UnsafeArchiveError(f"zip entry '{info.filename}' could not be extracted ({exc}); re-create the "
                                 "archive", filename=archive) from exc
    except (UnsafeArchiveError, LimitExceededError):
        path.unlink(missing_ok=True)
        raise
    return written
