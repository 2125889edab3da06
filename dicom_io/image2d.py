"""Load one projection radiograph (CR, DX, MG, or a single-frame secondary capture) as an Image2D.

``array``: stored values through the modality LUT (Modality LUT Sequence or rescale), float32; MONOCHROME1 is
inverted within the value range the modality LUT can produce, so larger is always brighter. Colour images (and
PALETTE COLOR ones, through their palette: their stored values are indices) are converted to luminance (ITU-R
BT.601 weights).

``display``: uint8 after the VOI LUT Sequence when present, else the first WindowCenter/WindowWidth with its
VOILUTFunction (LINEAR, LINEAR_EXACT, SIGMOID; PS3.3 C.11.2.1.2), else a 0.5-99.5 percentile window; then
inverted for MONOCHROME1. The window is applied to the non-inverted values, as a viewer does.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_voi_lut

from dicom_io.codecs import decode_frames
from dicom_io.errors import DecodeError, UnsupportedInputError
from dicom_io.limits import Limits
from dicom_io.modality import checked_number, checked_slope, has_modality_lut, modality_lut, rescale_into
from dicom_io.types import Image2D, InstanceHeader

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def load_image2d(instance: InstanceHeader, limits: Limits) -> Image2D:
    """Decode a single-frame image and return modality values plus the 8-bit display image."""
    ds, name = instance.dataset, instance.path.name
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise UnsupportedInputError(f"NumberOfFrames (0028,0008) = {frames}: a projection image must have one "
                                    "frame; send single-frame images", filename=name)
    stored = decode_frames(instance, limits)[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric == "PALETTE COLOR":  # stored values are palette indices, not intensities
        stored = _palette_to_rgb(stored, ds, name)
    if stored.ndim == 3:
        values = (stored.astype(np.float32) @ _LUMA).astype(np.float32)
        display = _to_uint8(values, 0.0, float(np.iinfo(stored.dtype).max) if stored.dtype.kind in "ui" else 1.0)
        return Image2D(values, display, pixel_spacing(ds), instance.ref, ds, photometric)
    values = _modality_values(stored, ds, name)
    display = _display(values, ds, name)
    if photometric == "MONOCHROME1":
        low, high = _modality_range(ds, stored.dtype, name)
        values = np.float32(low + high) - values
        display = 255 - display
    return Image2D(values, display, pixel_spacing(ds), instance.ref, ds, photometric)


def _palette_to_rgb(indices: np.ndarray, ds: Dataset, name: str) -> np.ndarray:
    try:
        return np.asarray(apply_color_lut(indices, ds))
    except Exception as exc:  # pydicom raises several types on a malformed palette
        raise DecodeError(f"PhotometricInterpretation is PALETTE COLOR but the palette is missing or malformed "
                          f"({type(exc).__name__}: {exc}); fix the palette or send a MONOCHROME2 image",
                          filename=name) from exc


def pixel_spacing(ds: Dataset, keywords: tuple[str, ...] = ("PixelSpacing", "ImagerPixelSpacing")
                  ) -> tuple[float, float] | None:
    """(row, column) mm from the first of ``keywords`` holding two positive numbers; None when none does (a
    malformed value, e.g. one number, zero or text, is passed over rather than failing the image)."""
    for keyword in keywords:
        value = ds.get(keyword)
        if isinstance(value, (MultiValue, list, tuple)) and len(value) == 2:  # one value is a DSfloat, no len()
            try:
                row, col = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                continue
            if row > 0 and col > 0:
                return row, col
    return None


def _modality_range(ds: Dataset, dtype: np.dtype, name: str) -> tuple[float, float]:
    """The smallest and largest value the modality LUT can produce from the stored bit depth."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    extremes = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1], dtype=np.int64)
    mapped = _modality_values(extremes.astype(dtype), ds, name)
    return float(mapped.min()), float(mapped.max())


def _modality_values(stored: np.ndarray, ds: Dataset, name: str) -> np.ndarray:
    """Stored values through the Modality LUT Sequence, else RescaleSlope/Intercept, checked as for volumes
    (pydicom's own rescale raises TypeError on an empty slope and broadcasts a multi-valued one), as float32."""
    if has_modality_lut(ds):
        return np.asarray(modality_lut(stored, ds, name), dtype=np.float32)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    values = np.empty(stored.shape, dtype=np.float32)
    rescale_into(values, stored,
                 1.0 if slope in (None, "") else checked_slope(slope, "RescaleSlope (0028,1053)", name),
                 0.0 if intercept in (None, "") else checked_number(intercept, "RescaleIntercept (0028,1052)", name))
    return values


def _display(values: np.ndarray, ds: Dataset, name: str) -> np.ndarray:
    if "VOILUTSequence" in ds and ds.VOILUTSequence:
        try:
            lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
            indices = np.rint(values).astype(np.int64)  # a LUT is indexed by integer modality values
            mapped = np.asarray(apply_voi_lut(indices, ds, prefer_lut=True), dtype=np.float64)
        except Exception as exc:  # pydicom raises several types on a malformed LUT
            raise DecodeError(f"VOILUTSequence (0028,3010) is malformed ({type(exc).__name__}: {exc}); fix or "
                              "remove it", filename=name) from exc
        return _to_uint8(mapped, float(lut.min()), float(lut.max()))
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        unit = values.astype(np.float64)  # computed in place below: one full-size array, not one per step
        if function == "SIGMOID":
            unit -= center
            unit *= -4.0 / width
            np.exp(unit, out=unit)
            unit += 1.0
            np.reciprocal(unit, out=unit)
        elif function == "LINEAR_EXACT":
            unit -= center - width / 2.0
            unit /= width
        else:
            if width < 1:
                width = 1.0
            unit -= center - 0.5
            unit /= width - 1.0
            unit += 0.5
        return _to_uint8(np.clip(unit, 0.0, 1.0, out=unit), 0.0, 1.0)
    low, high = np.percentile(values, [0.5, 99.5])
    return _to_uint8(np.clip(values, low, high), float(low), float(high))


def _first(value: object) -> float | None:
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    try:
        return float(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    span = high - low
    if span <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = np.subtract(values, low, dtype=np.float64)
    scaled *= 255.0 / span
    return np.clip(np.rint(scaled, out=scaled), 0, 255, out=scaled).astype(np.uint8)
