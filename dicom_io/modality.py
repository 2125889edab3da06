"""The modality LUT stage that volumes and 2D images share: checked rescale values, the Modality LUT Sequence,
and stored values to float32 modality values (PS3.3 C.11.1)."""

from __future__ import annotations

import math

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from dicom_io.errors import DecodeError

FLOAT32_MAX = float(np.finfo(np.float32).max)


def checked_number(value: object, keyword: str, name: str) -> float:
    """``value`` as one finite number that float32 can hold (modality values are float32: 1e300 would become
    inf); DecodeError naming ``keyword`` (with its tag) otherwise."""
    try:
        result = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        result = float("nan")
    if not (math.isfinite(result) and abs(result) <= FLOAT32_MAX):
        raise DecodeError(f"{keyword} has the invalid value {value!r}; fix the header", filename=name)
    return result


def checked_slope(value: object, keyword: str, name: str) -> float:
    """A rescale slope: a checked number, never 0 (which would map every pixel to the intercept)."""
    slope = checked_number(value, keyword, name)
    if slope == 0:
        raise DecodeError(f"{keyword} = {value!r} maps every pixel to the intercept; fix the header", filename=name)
    return slope


def has_modality_lut(ds: Dataset) -> bool:
    """Whether ``ds`` carries a non-empty Modality LUT Sequence (an empty one means: rescale as usual)."""
    return bool(ds.get("ModalityLUTSequence"))


def modality_lut(stored: np.ndarray, ds: Dataset, name: str) -> np.ndarray:
    """``stored`` through the Modality LUT Sequence; DecodeError when the LUT is malformed."""
    try:
        return apply_modality_lut(stored, ds)
    except Exception as exc:  # pydicom raises several types on a malformed LUT
        raise DecodeError(f"ModalityLUTSequence (0028,3000) is malformed ({type(exc).__name__}: {exc}); fix or "
                          "remove it", filename=name) from exc


def rescale_into(out: np.ndarray, stored: np.ndarray, slope: float, intercept: float) -> None:
    """``out`` (float32) = float32(stored) * slope + intercept.

    A plain cast, then in-place arithmetic on ``out`` (a slice, in cache), is about twice as fast as one ufunc
    casting its input on the way.
    """
    np.copyto(out, stored, casting="unsafe")
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
