"""Transfer syntax support and pixel decoding.

What is decodable is asked of pydicom's decoder registry (``pydicom.pixels.get_decoder``) so that installing or
removing a plugin (pylibjpeg-*, pyjpegls, python-gdcm) changes the answer without code changes here.

Decoding returns *stored values* (before the modality LUT). Native little-endian monochrome pixel data is read
straight from the file with ``np.fromfile`` at the pixel data offset found by the header pass; everything else goes
through pydicom's pixel backend. Deflated files are inflated with a bounded ``zlib.decompressobj``.
"""

from __future__ import annotations

import io
import re
import zlib
from typing import BinaryIO

import libjpeg
import numpy as np
import openjpeg
import pydicom.uid as uids
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.filereader import dcmread, read_dataset
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import UID

from dicom_io.errors import DecodeError, LimitExceededError, UnsupportedInputError
from dicom_io.limits import Limits
from dicom_io.rawvalues import header_value, required_value
from dicom_io.types import InstanceHeader

_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")
_JPEG_FAMILY = {
    uids.JPEGBaseline8Bit, uids.JPEGExtended12Bit, uids.JPEGLossless, uids.JPEGLosslessSV1,
    uids.JPEGLSLossless, uids.JPEGLSNearLossless,
}
_JPEG2000_FAMILY = {
    uids.JPEG2000Lossless, uids.JPEG2000, uids.HTJ2KLossless, uids.HTJ2KLosslessRPCL, uids.HTJ2K,
}
NATIVE_LITTLE_ENDIAN = {uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian}
_INFLATE_CHUNK = 1 << 20
HEADER_INFLATE_BYTES = 64 << 20
"""At most this much of a deflated dataset is kept for the header pass (and allowed beyond the pixel data)."""
LOSSY_SYNTAXES = {
    uids.JPEGBaseline8Bit, uids.JPEGExtended12Bit, uids.JPEGLSNearLossless, uids.JPEG2000, uids.HTJ2K,
}
"""Transfer syntaxes whose pixel data may have lost information (PS3.5 8.2: "lossy" or "may be lossy")."""


def lossy_compression(ds: Dataset) -> str | None:
    """How the pixels were compressed with loss, for the report: the dataset's own flag (LossyImageCompression
    "01", which survives later re-encoding) or a lossy transfer syntax; None when neither says so."""
    if str(header_value(ds, "LossyImageCompression", "") or "").strip() == "01":
        method = str(header_value(ds, "LossyImageCompressionMethod", "") or "").strip()
        return f"LossyImageCompression 01{f' ({method})' if method else ''}"
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return f"transfer syntax {ts.name}" if ts in LOSSY_SYNTAXES else None


def available_decoders() -> dict[str, bool]:
    """Transfer syntax name -> whether pixel data in it can be decoded with the installed plugins."""
    return {str(ts.name): is_decodable(ts) for ts in uids.AllTransferSyntaxes}


def is_decodable(transfer_syntax: str) -> bool:
    try:
        uid = transfer_syntax if isinstance(transfer_syntax, UID) else UID(transfer_syntax)
        return bool(get_decoder(uid).is_available)
    except (NotImplementedError, ValueError):
        return False


def require_decodable(transfer_syntax: str, filename: str) -> None:
    """Raise UnsupportedInputError unless pixel data in ``transfer_syntax`` can be decoded here."""
    if is_decodable(transfer_syntax):
        return
    uid = UID(transfer_syntax)
    name = uid.name if uid.is_transfer_syntax else "unknown"
    raise UnsupportedInputError(
        f"TransferSyntaxUID {transfer_syntax} ({name}) has no pixel decoder installed; re-send the images "
        "uncompressed (Explicit VR Little Endian) or in JPEG, JPEG-LS, JPEG 2000 or RLE",
        filename=filename,
    )


class BoundedInflater:
    """Incremental raw-deflate inflation that never produces more than ``max_bytes`` in total.

    ``inflate_to(n)`` inflates until ``n`` bytes have come out (or the stream ends); with ``keep=False`` the output
    is only counted, so a deflate bomb is measured without being stored. Exceeding ``max_bytes`` raises
    LimitExceededError.
    """

    def __init__(self, source: BinaryIO, max_bytes: int, filename: str) -> None:
        self.source = source
        self.max_bytes = max_bytes
        self.filename = filename
        self.data = bytearray()
        self.total = 0
        self.complete = False
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending = b""

    def inflate_to(self, target: int, *, keep: bool = True) -> None:
        while not self.complete and self.total < target:
            if not self._pending:
                self._pending = self.source.read(_INFLATE_CHUNK)
                if not self._pending:
                    self.complete = True
                    return
            room = min(_INFLATE_CHUNK, self.max_bytes + 1 - self.total)
            try:
                chunk = self._inflater.decompress(self._pending, room)
            except zlib.error as exc:
                raise DecodeError(f"the deflated dataset is corrupt ({exc}); re-send the file",
                                  filename=self.filename) from exc
            self._pending = self._inflater.unconsumed_tail
            self.total += len(chunk)
            if keep:
                self.data += chunk
            if self.total > self.max_bytes:
                raise LimitExceededError(
                    f"the deflated dataset inflates to more than {self.max_bytes} bytes (deflate bomb?); send "
                    "uncompressed files or raise the limit (RADINFER_MAX_INFLATED_BYTES)",
                    filename=self.filename,
                )
            if self._inflater.eof:
                self.complete = True


def _native_frames(header: InstanceHeader) -> np.ndarray | None:
    """Stored values read straight from the file, or None when the fast path does not apply."""
    ds = header.dataset
    ts = header_value(ds.file_meta, "TransferSyntaxUID")
    bits = int(required_value(ds, "BitsAllocated"))
    if (
        ts not in NATIVE_LITTLE_ENDIAN
        or header.pixel is None
        or header.pixel.keyword != "PixelData"
        or header.pixel.value_offset is None
        or bits not in (8, 16, 32)
        or int(header_value(ds, "SamplesPerPixel", 1)) != 1
    ):
        return None
    frames = int(header_value(ds, "NumberOfFrames", 1) or 1)
    rows, cols = int(required_value(ds, "Rows")), int(required_value(ds, "Columns"))
    signed = int(header_value(ds, "PixelRepresentation", 0)) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    count = frames * rows * cols
    arr = np.fromfile(header.path, dtype=dtype, count=count, offset=header.pixel.value_offset)
    if arr.size != count:
        raise DecodeError(
            f"PixelData holds {arr.size} of {count} expected values (file truncated); re-send the complete file",
            filename=header.path.name,
        )
    return _keep_bits_stored(arr, ds).reshape(frames, rows, cols)


def _keep_bits_stored(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Clear (unsigned) or sign-extend (signed) the bits above BitsStored of monochrome integer pixels.

    Those bits are not part of the value (old overlays, garbage). pydicom drops them for native data only; some
    encoders (dcmcjpls) compress them into a 16-bit JPEG-LS stream for BitsStored 12, and decoders return them.
    """
    bits = arr.dtype.itemsize * 8
    stored = int(header_value(ds, "BitsStored", bits) or bits)
    if arr.dtype.kind not in "iu" or stored >= bits or int(header_value(ds, "SamplesPerPixel", 1) or 1) != 1:
        return arr
    if arr.dtype.kind == "i":
        shift = bits - stored
        return (arr << shift) >> shift
    return arr & ((1 << stored) - 1)


def decode_frames(header: InstanceHeader, limits: Limits) -> np.ndarray:
    """Decode all frames of one instance to stored values: shape (frames, rows, cols[, samples])."""
    ds = header.dataset
    name = header.path.name
    fast = _native_frames(header)
    if fast is not None:
        return fast
    ts = ds.file_meta.TransferSyntaxUID
    try:
        if ts == uids.DeflatedExplicitVRLittleEndian:
            full = _read_deflated(header, limits)
            arr = full.pixel_array
        elif ds.original_encoding[0] != ts.is_implicit_VR:
            # The dataset's VR encoding contradicts the transfer syntax (some writers encode implicit VR under an
            # explicit syntax): pixel_array(path) parses by the syntax and fails, a dataset read as found works.
            arr = dcmread(header.path, force=True).pixel_array
        else:
            check_codestream_sizes(header)
            arr = pixel_array(str(header.path))
    except (DecodeError, LimitExceededError, UnsupportedInputError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # plugins raise many types (Rust panics derive from BaseException): undecodable
        raise DecodeError(
            f"pixel data in {ts.name} could not be decoded ({type(exc).__name__}: {_decoder_reason(exc)}); check "
            "the file is complete or re-send it uncompressed",
            filename=name,
        ) from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1))
    if frames == 1 and arr.ndim == (2 if spp == 1 else 3):
        arr = arr[np.newaxis]
    return _keep_bits_stored(arr, ds)


def _codestream_size(frame: bytes, transfer_syntax: UID) -> tuple[int, int, int] | None:
    """(rows, columns, components) that a JPEG, JPEG-LS or JPEG 2000 frame's own header declares; None for other
    syntaxes (RLE and native data are decoded to the size the DICOM header declares)."""
    if transfer_syntax in _JPEG_FAMILY:
        found = libjpeg.get_parameters(frame)
        return int(found["rows"]), int(found["columns"]), int(found["nr_components"])
    if transfer_syntax in _JPEG2000_FAMILY:
        found = openjpeg.get_parameters(frame)
        return int(found["rows"]), int(found["columns"]), int(found["samples_per_pixel"])
    return None


def check_codestream_sizes(header: InstanceHeader) -> None:
    """Refuse compressed frames larger than Rows x Columns x SamplesPerPixel before decoding any of them.

    The limits check the DICOM header's sizes, but a decoder allocates what the codestream's own header says: a
    10 MB JPEG declaring 256 x 256 in DICOM can hold 30000 x 30000 pixels (gigabytes once decoded).
    """
    ds = header.dataset
    ts = ds.file_meta.TransferSyntaxUID
    pixel = header.pixel
    if (ts not in _JPEG_FAMILY and ts not in _JPEG2000_FAMILY) or pixel is None or pixel.value_offset is None:
        return
    declared = (int(required_value(ds, "Rows")), int(required_value(ds, "Columns")),
                int(header_value(ds, "SamplesPerPixel", 1) or 1))
    frames = int(header_value(ds, "NumberOfFrames", 1) or 1)
    with open(header.path, "rb") as fp:
        fp.seek(pixel.value_offset)
        for index, frame in enumerate(generate_frames(fp, number_of_frames=frames)):
            try:
                found = _codestream_size(frame, ts)
            except (RuntimeError, ValueError, KeyError):
                found = None  # a header libjpeg/openjpeg cannot read: another decoder plugin may still, or fail
            if found is not None and found != declared:
                raise DecodeError(
                    f"frame {index + 1}: the {ts.name} codestream holds {found[0]} x {found[1]} pixels with "
                    f"{found[2]} component(s), but Rows x Columns x SamplesPerPixel say {declared[0]} x "
                    f"{declared[1]} x {declared[2]}; the file is inconsistent and was not decoded",
                    filename=header.path.name,
                )


def _decoder_reason(exc: BaseException, limit: int = 300) -> str:
    """A decoder's message for people: one line, without object addresses (``<_io.BytesIO object at 0x...>``),
    at most ``limit`` characters (pydicom joins every plugin's message into one long text)."""
    text = " ".join(str(exc).split())
    text = _OBJECT_REPR.sub("<...>", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_deflated(header: InstanceHeader, limits: Limits) -> Dataset:
    """The full dataset (with pixels) of a deflated file, inflated within bounds derived from the header."""
    ds = header.dataset
    expected = expected_pixel_bytes(ds)
    assert header.pixel is not None, "the header pass records where the dataset starts"
    bound = min(limits.max_inflated_bytes, expected + HEADER_INFLATE_BYTES)
    with open(header.path, "rb") as fp:
        fp.seek(header.pixel.dataset_offset)
        inflater = BoundedInflater(fp, bound, header.path.name)
        inflater.inflate_to(bound)
    full = read_dataset(io.BytesIO(inflater.data), is_implicit_VR=False, is_little_endian=True)
    full.file_meta = FileMetaDataset(ds.file_meta)
    full.set_original_encoding(False, True, full._character_set)
    return full


def expected_pixel_bytes(ds: Dataset) -> int:
    """Rows x Columns x Frames x SamplesPerPixel x BitsAllocated / 8 (rounded up for 1-bit data)."""
    return pixel_bytes(
        int(header_value(ds, "Rows", 0) or 0),
        int(header_value(ds, "Columns", 0) or 0),
        int(header_value(ds, "NumberOfFrames", 1) or 1),
        int(header_value(ds, "SamplesPerPixel", 1) or 1),
        int(header_value(ds, "BitsAllocated", 8) or 8),
    )


def pixel_bytes(rows: int, columns: int, frames: int, samples: int, bits_allocated: int) -> int:
    """The size of native pixel data: rows x columns x frames x samples x bits / 8, rounded up for 1-bit data."""
    return (rows * columns * frames * samples * bits_allocated + 7) // 8
