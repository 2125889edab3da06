"""Malformed and hostile DICOM inputs (bombs, deep nesting, bad headers) for tests of the ingest limits.

Used by the dicom_io tests and available to API tests that need bad uploads. Also a sphere phantom helper.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid as uids
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info


def sphere_phantom(shape: tuple[int, int, int], center_kji: tuple[int, int, int], radius_vox: float,
                   value: float = 400.0) -> np.ndarray:
    """Air (-1000 HU) with a sphere of ``value`` HU around ``center_kji`` (radius in voxels)."""
    k, j, i = np.indices(shape)
    ck, cj, ci = center_kji
    inside = (k - ck) ** 2 + (j - cj) ** 2 + (i - ci) ** 2 <= radius_vox**2
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[inside] = value
    return hu


def meta_bytes(transfer_syntax: str, sop_class: str = "1.2.840.10008.5.1.4.1.1.7") -> bytes:
    """Preamble, 'DICM' and a file meta group for ``transfer_syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = uids.PYDICOM_IMPLEMENTATION_UID
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta)
    return b"\0" * 128 + b"DICM" + buffer.getvalue()


def image_dataset_bytes(rows: int = 512, columns: int = 512, study_uid: str = "1.2.3.4") -> bytes:
    """An explicit-VR little-endian secondary-capture header (no pixel data element)."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def pixel_element_header(length: int) -> bytes:
    return struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, length)


def deflate_bomb(path: Path, header: bytes, zero_bytes: int) -> Path:
    """A deflated-TS file whose dataset is ``header`` followed by ``zero_bytes`` zeros (GBs from a few MB).

    Zeros are compressed once in 16 MiB segments ended by a full flush, so each segment's compressed form is
    identical and can be repeated without compressing gigabytes.
    """
    segment_size = 16 << 20
    head = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = head.compress(header) + head.flush(zlib.Z_FULL_FLUSH)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    segment = zeros.compress(b"\0" * segment_size) + zeros.flush(zlib.Z_FULL_FLUSH)
    final_empty_block = b"\x03\x00"
    body = first + segment * (zero_bytes // segment_size) + final_empty_block
    path.write_bytes(meta_bytes(uids.DeflatedExplicitVRLittleEndian) + body)
    return path


def nested_sequence_file(path: Path, depth: int) -> Path:
    """A small SC image whose ReferencedImageSequence items nest ``depth`` levels deep."""
    ds = Dataset()
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3"
    for _ in range(depth):
        outer = Dataset()
        outer.ReferencedImageSequence = [inner]
        inner = outer
    ds.update(inner)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(16)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def raw_nested_sequence_file(path: Path, depth: int) -> Path:
    """Like nested_sequence_file but written byte by byte (undefined lengths), for depths pydicom cannot write."""
    seq_open = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
    item_open = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_close = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    seq_close = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    body = (seq_open + item_open) * depth + (item_close + seq_close) * depth
    path.write_bytes(meta_bytes(uids.ExplicitVRLittleEndian) + body)
    return path
