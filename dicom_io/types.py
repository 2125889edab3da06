"""Plain data types shared by the reader, the series grouper, the volume builder and the writers.

Index conventions (one place, used everywhere):
- ``Volume.array`` is indexed ``[k, j, i]``: k = slice (ordered along the slice normal), j = row, i = column.
- ``Volume.affine`` maps the *array index order* to patient LPS millimetres:
  ``affine @ [k, j, i, 1] = [x, y, z, 1]`` (DICOM patient coordinates, LPS).
- ``Volume.spacing`` is in the same order: (slice spacing, row spacing, column spacing) in mm.
- ``Image2D.array`` is indexed ``[row, column]``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.rawvalues import header_value, required_value


@dataclass(frozen=True)
class InstanceRef:
    """A reference to one source image (and frame, 1-based, for multi-frame instances)."""

    sop_class_uid: str
    sop_instance_uid: str
    frame: int | None = None


@dataclass(frozen=True)
class PixelDataLocation:
    """Where the pixel data element of an instance lies, found by the header pass without reading pixels.

    ``value_offset`` is the file offset of the element's value (None for deflated files, whose dataset must be
    inflated first); ``length`` is the declared value length (None when undefined, i.e. encapsulated);
    ``dataset_offset`` is the file offset where the dataset starts, after the file meta information.
    """

    keyword: str
    value_offset: int | None
    length: int | None
    dataset_offset: int


@dataclass
class InstanceHeader:
    """One instance after the header pass: its file on disk and its dataset *without* pixel data."""

    path: Path
    dataset: Dataset
    pixel: PixelDataLocation | None = None

    @property
    def sop_instance_uid(self) -> str:
        return str(required_value(self.dataset, "SOPInstanceUID"))

    @property
    def sop_class_uid(self) -> str:
        return str(required_value(self.dataset, "SOPClassUID"))

    @property
    def ref(self) -> InstanceRef:
        return InstanceRef(self.sop_class_uid, self.sop_instance_uid)


@dataclass
class SkippedInstance:
    """An instance that was not used (non-image SR/PR/KO, or unrelated), with the reason."""

    filename: str
    reason: str


@dataclass
class Series:
    """Image instances of one series, in arrival order (ordering by geometry happens in the volume builder)."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    instances: list[InstanceHeader] = field(default_factory=list)

    @property
    def first(self) -> Dataset:
        return self.instances[0].dataset

    @property
    def sop_class_uid(self) -> str:
        return str(required_value(self.first, "SOPClassUID"))

    @property
    def body_part(self) -> str:
        return str(self.first.get("BodyPartExamined", "") or "").upper()

    @property
    def image_type(self) -> tuple[str, ...]:
        value = self.first.get("ImageType") or []
        return (str(value).upper(),) if isinstance(value, str) else tuple(str(v).upper() for v in value)

    @property
    def description(self) -> str:
        return str(self.first.get("SeriesDescription", "") or "")

    @property
    def num_frames(self) -> int:
        return sum(int(header_value(h.dataset, "NumberOfFrames", 1) or 1) for h in self.instances)


@dataclass
class Study:
    """All image series of one study plus what was skipped and why."""

    study_instance_uid: str
    series: list[Series] = field(default_factory=list)
    skipped: list[SkippedInstance] = field(default_factory=list)

    def skipped_summary(self, most: int = 4) -> str:
        """Why instances were skipped, most frequent first, with counts (no file names: they may be PHI)."""
        counts = Counter(item.reason for item in self.skipped)
        parts = [f"{n} x {reason}" for reason, n in counts.most_common(most)]
        if len(counts) > most:
            parts.append(f"{len(counts) - most} other reason(s)")
        return "; ".join(parts)


@dataclass
class Volume:
    """A 3D image in float32 after the modality LUT (CT in HU), with LPS geometry. See module docstring."""

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    slice_refs: list[InstanceRef]
    series: Series
    frame_of_reference_uid: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def voxel_mm3(self) -> float:
        """One voxel's volume in mm^3 (from the affine, so oblique and sheared grids are right too)."""
        return abs(float(np.linalg.det(self.affine[:3, :3])))

    @property
    def tilt_deg(self) -> float:
        """Angle between the slice step and the slice normal in degrees: the gantry tilt of a tilted CT acquisition
        (its slices shifted in-plane along the stack); 0 for an orthogonal stack."""
        step, column, row = (self.affine[:3, axis] for axis in range(3))
        normal = np.cross(row, column)
        cosine = abs(float(step @ normal)) / float(np.linalg.norm(step) * np.linalg.norm(normal))
        return float(np.degrees(np.arccos(min(1.0, cosine))))

    def index_to_lps(self, kji: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """Map array index coordinates (k, j, i) -> patient LPS mm."""
        v = np.asarray(kji, dtype=np.float64)
        return (self.affine[:3, :3] @ v.T).T + self.affine[:3, 3]

    def lps_to_index(self, xyz: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """Map patient LPS mm -> fractional array index (k, j, i)."""
        inv = np.linalg.inv(self.affine)
        v = np.asarray(xyz, dtype=np.float64)
        return (inv[:3, :3] @ v.T).T + inv[:3, 3]


@dataclass
class Image2D:
    """A projection radiograph (CR, DX, MG) in float32.

    ``array`` holds stored values after the modality LUT, inverted for MONOCHROME1 so that larger values are
    always brighter on display. ``display`` is the uint8 image after the VOI LUT or window (what a viewer shows).
    """

    array: np.ndarray
    display: np.ndarray
    pixel_spacing: tuple[float, float] | None
    ref: InstanceRef
    header: Dataset
    photometric_interpretation: str
