"""Build a float32 volume from one series: order slices by geometry, check consistency, decode, rescale.

Ordering and geometry
    Slices (single-frame instances, or frames of multi-frame instances) are ordered by ImagePositionPatient
    projected on the slice normal ``n = row_direction x column_direction`` (ImageOrientationPatient), never by
    InstanceNumber. Enhanced multi-frame objects take position, orientation, pixel spacing and rescale from the
    per-frame (else shared) functional groups; classic multi-frame objects place frame f at
    ``IPP + offset_f * n`` with ``offset_f`` from GridFrameOffsetVector, else ``f * SpacingBetweenSlices``
    (or SliceThickness). A lone slice without geometry gets an identity orientation at the origin.

Tolerances (all rejections raise GeometryError naming the files involved)
    - Rows/Columns must be identical; direction cosines must agree within ``ORIENTATION_TOLERANCE`` (1e-3);
      PixelSpacing within 1e-3 relative.
    - Two slices whose positions along n differ by less than ``max(1e-3 mm, 1e-3 * step)`` are duplicates:
      rejected (the same SOPInstanceUID sent twice was already dropped when grouping the series).
    - Each step along n must be within ``max(0.02 mm, 1% of the median step)`` of the median step; a step that
      is a whole multiple of it is reported as missing slices, anything else as uneven spacing.
    - Positions must lie on a line (``p_k = p_0 + k * s``) within the same tolerance. A constant in-plane shift
      per slice (gantry tilt) is accepted and encoded in the affine's k column (then non-orthogonal);
      ``spacing[0]`` is the distance between slice planes along n.

Decoding is done per instance in a thread pool into a preallocated float32 array, one slice at a time
(``stored * slope + intercept``, or the Modality LUT Sequence when present; RT Dose grids use DoseGridScaling as
the slope so that values are in Gy).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.codecs import decode_frames
from dicom_io.errors import GeometryError, LimitExceededError, UnsupportedInputError
from dicom_io.limits import Limits
from dicom_io.modality import checked_number, checked_slope, has_modality_lut, modality_lut, rescale_into
from dicom_io.rawvalues import has_element, header_value, required_value
from dicom_io.types import InstanceHeader, InstanceRef, Series, Volume

ORIENTATION_TOLERANCE = 1e-3
DUPLICATE_TOLERANCE_MM = 1e-3
SPACING_TOLERANCE_MM = 0.02
SPACING_TOLERANCE_RELATIVE = 0.01
MAX_DECODE_THREADS = 8


@dataclass
class _Frame:
    header: InstanceHeader
    index: int
    multi: bool
    position: np.ndarray | None
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float

    @property
    def label(self) -> str:
        return f"{self.header.path.name} frame {self.index + 1}" if self.multi else self.header.path.name


def build_volume(series: Series, limits: Limits) -> Volume:
    """Decode ``series`` into a Volume (float32, modality values, LPS affine). See the module docstring."""
    if not series.instances:
        raise GeometryError("the series has no image instances")
    _check_samples(series)
    rows, cols = _common_size(series)
    frames = [frame for header in series.instances for frame in _frames(header)]
    total = len(frames) * rows * cols * 4
    if total > limits.max_pixel_bytes_total:
        raise LimitExceededError(f"the volume needs {total} bytes as float32, more than the limit of "
                                 f"{limits.max_pixel_bytes_total}; send fewer slices or raise "
                                 "RADINFER_MAX_PIXEL_BYTES_TOTAL", filename=series.instances[0].path.name)
    frames, affine, spacing = _order_and_geometry(frames)
    array = np.empty((len(frames), rows, cols), dtype=np.float32)
    slots: dict[int, list[tuple[int, _Frame]]] = {}
    for k, frame in enumerate(frames):
        slots.setdefault(id(frame.header), []).append((k, frame))

    def fill(items: list[tuple[int, _Frame]]) -> None:
        stored = decode_frames(items[0][1].header, limits)
        for k, frame in items:
            _rescale_into(array[k], stored[frame.index], frame)

    def fill_all(jobs: list[list[tuple[int, _Frame]]]) -> None:
        for job in jobs:
            fill(job)

    jobs = list(slots.values())
    workers = max(1, min(MAX_DECODE_THREADS, os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        fill_all(jobs)
    else:  # a few interleaved batches per thread: fewer hand-overs than one task per instance, still balanced
        batches = min(len(jobs), 4 * workers)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(fill_all, [jobs[b::batches] for b in range(batches)]))
    refs = [InstanceRef(f.header.sop_class_uid, f.header.sop_instance_uid, f.index + 1 if f.multi else None)
            for f in frames]
    frame_uid = header_value(series.first, "FrameOfReferenceUID")
    return Volume(array=array, affine=affine, spacing=spacing, slice_refs=refs, series=series,
                  frame_of_reference_uid=str(frame_uid) if frame_uid else None)


def _rescale_into(out: np.ndarray, stored: np.ndarray, frame: _Frame) -> None:
    ds = frame.header.dataset
    if has_element(ds, "ModalityLUTSequence") and has_modality_lut(ds):
        out[...] = modality_lut(stored, ds, frame.header.path.name)
    else:
        rescale_into(out, stored, frame.slope, frame.intercept)


def _check_samples(series: Series) -> None:
    for header in series.instances:
        spp = int(header_value(header.dataset, "SamplesPerPixel", 1) or 1)
        if spp != 1:
            raise UnsupportedInputError(f"SamplesPerPixel (0028,0002) = {spp}: colour images cannot form a volume; "
                                        "send a monochrome series", filename=header.path.name)
        if str(header_value(header.dataset, "PhotometricInterpretation", "") or "").strip() == "PALETTE COLOR":
            raise UnsupportedInputError("PhotometricInterpretation (0028,0004) = PALETTE COLOR: palette indices are "
                                        "not intensities and cannot form a volume; send a monochrome series",
                                        filename=header.path.name)


def _common_size(series: Series) -> tuple[int, int]:
    first = series.instances[0]
    size = (int(required_value(first.dataset, "Rows")), int(required_value(first.dataset, "Columns")))
    for header in series.instances[1:]:
        other = (int(required_value(header.dataset, "Rows")), int(required_value(header.dataset, "Columns")))
        if other != size:
            raise GeometryError(f"mixed image sizes in one series: Rows x Columns {size[0]}x{size[1]} in "
                                f"{first.path.name} but {other[0]}x{other[1]} in {header.path.name}; send a series "
                                "whose slices all have the same size")
    return size


def _item(ds: Dataset | None, sequence: str) -> Dataset | None:
    if ds is None or not has_element(ds, sequence) or not ds[sequence].value:
        return None
    return ds[sequence].value[0]


def _from_groups(groups: list[Dataset | None], sequence: str, keyword: str) -> object | None:
    for group in groups:
        item = _item(group, sequence)
        if item is not None and keyword in item and item[keyword].value not in (None, ""):
            return item[keyword].value
    return None


def _floats(value: object, count: int, keyword: str, name: str) -> np.ndarray:
    try:
        numbers = [float(v) for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != count or not all(map(math.isfinite, numbers)):
        raise GeometryError(f"{keyword} has the invalid value {value!r} (expected {count} numbers); fix the header",
                            filename=name)
    return np.array(numbers, dtype=np.float64)


def _slope(group_value: object, ds: Dataset, name: str) -> float:
    """The functional groups' RescaleSlope, else the top-level one, else DoseGridScaling (RT Dose), else 1.

    A slope of 0 would map every pixel to the intercept: rejected, never replaced by another value.
    """
    keyword, value = "RescaleSlope (0028,1053)", group_value
    if value is None:
        value = header_value(ds, "RescaleSlope")
    if value in (None, ""):
        keyword, value = "DoseGridScaling (3004,000E)", header_value(ds, "DoseGridScaling")
    if value in (None, ""):
        return 1.0
    return checked_slope(value, keyword, name)


def _frames(header: InstanceHeader) -> list[_Frame]:
    ds, name = header.dataset, header.path.name
    count = int(header_value(ds, "NumberOfFrames", 1) or 1)
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = header_value(ds, "PerFrameFunctionalGroupsSequence") or []
    frames: list[_Frame] = []
    base_position = header_value(ds, "ImagePositionPatient")
    base_orientation = header_value(ds, "ImageOrientationPatient")
    offsets = _frame_offsets(ds, count, name) if not per_frame else None
    enhanced = shared is not None or bool(per_frame)  # else no functional group answers anything
    for f in range(count):
        groups = [per_frame[f] if f < len(per_frame) else None, shared] if enhanced else []
        position = _from_groups(groups, "PlanePositionSequence", "ImagePositionPatient") or base_position
        orientation = _from_groups(groups, "PlaneOrientationSequence", "ImageOrientationPatient") or base_orientation
        spacing = (_from_groups(groups, "PixelMeasuresSequence", "PixelSpacing") or header_value(ds, "PixelSpacing")
                   or header_value(ds, "ImagerPixelSpacing"))
        slope = _from_groups(groups, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _from_groups(groups, "PixelValueTransformationSequence", "RescaleIntercept")
        orient = (_floats(orientation, 6, "ImageOrientationPatient (0020,0037)", name) if orientation is not None
                  else np.array([1.0, 0, 0, 0, 1.0, 0]))
        pos = None
        if position is not None and orientation is not None:
            pos = _floats(position, 3, "ImagePositionPatient (0020,0032)", name)
            if offsets is not None:
                pos = pos + offsets[f] * _normal(orient)
        frames.append(_Frame(
            header=header, index=f, multi=count > 1,
            position=pos,
            orientation=orient,
            pixel_spacing=tuple(_floats(spacing, 2, "PixelSpacing (0028,0030)", name)) if spacing else (1.0, 1.0),
            slope=_slope(slope, ds, name),
            intercept=checked_number(intercept if intercept is not None else header_value(ds, "RescaleIntercept", 0) or 0,
                              "RescaleIntercept (0028,1052)", name),
        ))
    return frames


def _frame_offsets(ds: Dataset, count: int, name: str) -> np.ndarray | None:
    """Offsets along the normal of the frames of a classic multi-frame instance (None for one frame)."""
    if count == 1:
        return None
    grid = header_value(ds, "GridFrameOffsetVector")
    if grid is not None:
        return _floats(grid, count, "GridFrameOffsetVector (3004,000C)", name)
    step = _slice_step(ds, name)
    if step is None:
        raise GeometryError(f"multi-frame image with {count} frames has no GridFrameOffsetVector, "
                            "SpacingBetweenSlices or SliceThickness to place its frames; add one of them",
                            filename=name)
    return np.arange(count, dtype=np.float64) * step


def _slice_step(ds: Dataset, name: str) -> float | None:
    """SpacingBetweenSlices, else SliceThickness (the first that is set and not 0), checked like the rescale
    values so that a malformed one is a 422 naming it; None when neither is set."""
    for keyword, tag in (("SpacingBetweenSlices", "(0018,0088)"), ("SliceThickness", "(0018,0050)")):
        value = header_value(ds, keyword)
        if value not in (None, ""):
            step = checked_number(value, f"{keyword} {tag}", name)
            if step:
                return step
    return None


def _normal(orientation: np.ndarray) -> np.ndarray:
    normal = np.cross(orientation[:3], orientation[3:])
    norm = np.linalg.norm(normal)
    if norm < 0.5:
        raise GeometryError(f"ImageOrientationPatient {list(orientation)} has parallel or zero direction cosines; "
                            "fix the header")
    return normal / norm


def _order_and_geometry(frames: list[_Frame]) -> tuple[list[_Frame], np.ndarray, tuple[float, float, float]]:
    first = frames[0]
    if len(frames) > 1 and any(f.position is None for f in frames):
        missing = next(f for f in frames if f.position is None)
        raise GeometryError("ImagePositionPatient (0020,0032) or ImageOrientationPatient (0020,0037) is missing; "
                            "a multi-slice volume needs both on every slice", filename=missing.label)
    orientations = np.array([f.orientation for f in frames])
    spacings = np.array([f.pixel_spacing for f in frames])
    mixed_orientation = np.max(np.abs(orientations - first.orientation), axis=1) > ORIENTATION_TOLERANCE
    mixed_spacing = ~np.all(np.isclose(spacings, first.pixel_spacing, rtol=1e-3, atol=0), axis=1)
    differ = np.flatnonzero(mixed_orientation | mixed_spacing)
    if differ.size:  # report the first frame that differs, in the order given
        frame = frames[differ[0]]
        if mixed_orientation[differ[0]]:
            raise GeometryError(f"mixed orientations in one series: ImageOrientationPatient "
                                f"{_fmt(first.orientation)} in {first.label} but {_fmt(frame.orientation)} in "
                                f"{frame.label}; send a series acquired in one orientation")
        raise GeometryError(f"mixed PixelSpacing in one series: {list(first.pixel_spacing)} in {first.label} "
                            f"but {list(frame.pixel_spacing)} in {frame.label}; send one consistent series")
    row, col = first.orientation[:3], first.orientation[3:]
    normal = _normal(first.orientation)
    if first.position is None:
        origin = np.zeros(3)
        ordered, step_vector = frames, normal * (_slice_step(first.header.dataset, first.header.path.name) or 1.0)
        slice_spacing = float(np.linalg.norm(step_vector))
    else:
        distances = np.array([f.position @ normal for f in frames])
        order = np.argsort(distances, kind="stable")
        ordered = [frames[i] for i in order]
        distances = distances[order]
        origin = ordered[0].position
        if len(ordered) == 1:
            slice_spacing = _slice_step(first.header.dataset, first.header.path.name) or 1.0
            step_vector = normal * slice_spacing
        else:
            slice_spacing, step_vector = _check_spacing(ordered, distances)
    ps_row, ps_col = first.pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = step_vector
    affine[:3, 1] = col * ps_row
    affine[:3, 2] = row * ps_col
    affine[:3, 3] = origin
    return ordered, affine, (slice_spacing, float(ps_row), float(ps_col))


def _check_spacing(ordered: list[_Frame], distances: np.ndarray) -> tuple[float, np.ndarray]:
    steps = np.diff(distances)
    step = float(np.median(steps))
    duplicate = max(DUPLICATE_TOLERANCE_MM, 1e-3 * step)
    duplicates = np.flatnonzero(steps < duplicate)
    if duplicates.size:  # report the first pair along the normal
        k = int(duplicates[0])
        raise GeometryError(f"duplicate slice position: {ordered[k].label} and {ordered[k + 1].label} are both "
                            f"at {distances[k]:.3f} mm along the slice normal; remove the duplicate images")
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_RELATIVE * step)
    off = np.flatnonzero(~(np.abs(steps - step) <= tolerance))  # not "> tolerance": a NaN step is off too
    if off.size:  # report the first step off the median
        k = int(off[0])
        gap = steps[k]
        multiple = round(gap / step)
        if multiple >= 2 and abs(gap - multiple * step) <= tolerance * multiple:
            raise GeometryError(f"missing slice: {gap:.3f} mm between {ordered[k].label} and {ordered[k + 1].label} "
                                f"where the series steps {step:.3f} mm ({multiple - 1} slice(s) missing); send the "
                                "complete series")
        raise GeometryError(f"uneven slice spacing: {gap:.3f} mm between {ordered[k].label} and "
                            f"{ordered[k + 1].label} but {step:.3f} mm elsewhere; send a series with constant "
                            "spacing or resample it")
    positions = np.stack([f.position for f in ordered])
    step_vector = (positions[-1] - positions[0]) / (len(ordered) - 1)
    expected = positions[0] + np.arange(len(ordered))[:, None] * step_vector
    error = np.linalg.norm(positions - expected, axis=1)
    worst = int(np.argmax(error))
    if error[worst] > tolerance:
        raise GeometryError(f"slice positions are not on a line: {ordered[worst].label} is {error[worst]:.3f} mm "
                            "off; send a series with a constant in-plane offset per slice")
    return step, step_vector


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
