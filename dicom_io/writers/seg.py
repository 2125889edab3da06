"""Binary DICOM Segmentation (SEG) results built with highdicom.

The SEG belongs to the source study, starts a new series, references the source series and carries the model's
provenance (General Equipment, Contributing Equipment and, per segment, the Algorithm Identification
Sequence).
Source datasets may be header-only (no Pixel Data): highdicom needs only their geometry and identifiers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_io.writers.identity import derived_uid, series_date_time
from dicom_io.writers.provenance import ModelProvenance, add_image_comments
from dicom_io.writers.source import result_source

MORPHOLOGICALLY_ABNORMAL_STRUCTURE = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003
NODULE = codes.SCT.Nodule  # SCT 27925004


@dataclass(frozen=True)
class SegmentSpec:
    """One segment: its number in the SEG (1..N, consecutive), label, codes and tracking identifiers.

    ``tracking_uid`` defaults, when ``tracking_id`` is given, to a UID derived from the SEG's SOP Instance UID
    and the segment (read it back from the SEG's SegmentSequence, or let ``sr.measurement_report`` copy it, to
    track the finding in the SR).
    """

    number: int
    label: str
    category_code: Code | hd.sr.CodedConcept = MORPHOLOGICALLY_ABNORMAL_STRUCTURE
    type_code: Code | hd.sr.CodedConcept = NODULE
    tracking_id: str | None = None
    tracking_uid: str | None = None
    algorithm_type: str = "AUTOMATIC"


def _tracking_uid(sop_instance_uid: str, spec: SegmentSpec) -> str:
    """The same segment of the same SEG gets the same Tracking UID (the SEG's UID is deterministic: ResultSet)."""
    return derived_uid(sop_instance_uid, "segment", str(spec.number), str(spec.tracking_id))


def _source_frames(source_images: Sequence[Dataset]) -> int:
    if len(source_images) == 1:
        return int(source_images[0].get("NumberOfFrames", 1) or 1)
    return len(source_images)


def _highdicom_mask(mask: np.ndarray, segments: Sequence[SegmentSpec]) -> np.ndarray:
    """Validate ``mask``; return it as highdicom takes it: a uint label map or a uint8 segment stack."""
    numbers = [s.number for s in segments]
    if numbers != list(range(1, len(segments) + 1)):
        raise ValueError(f"segment numbers must be 1..N in order, got {numbers}; renumber the SegmentSpecs.")
    if mask.ndim == 4:
        if mask.shape[3] != len(segments):
            raise ValueError(
                f"mask has {mask.shape[3]} stacked segments but {len(segments)} SegmentSpecs were given."
            )
        return mask.astype(bool, copy=False).view(np.uint8)
    if mask.ndim != 3 or mask.dtype.kind not in "biu":
        raise ValueError(
            f"mask must be a [k, j, i] integer label array or a [k, j, i, segment] boolean stack, "
            f"got shape {mask.shape} dtype {mask.dtype}."
        )
    if mask.dtype.kind != "b" and (mask.min() < 0 or mask.max() > len(segments)):
        raise ValueError(
            f"mask labels must lie in 0..{len(segments)} (one SegmentSpec per label), "
            f"got {int(mask.min())}..{int(mask.max())}."
        )
    return mask.astype(np.uint8 if len(segments) < 256 else np.uint16, copy=False)


def binary_segmentation(
    source_images: Sequence[Dataset],
    mask: np.ndarray,
    segments: Sequence[SegmentSpec],
    *,
    provenance: ModelProvenance,
    series_instance_uid: str,
    series_number: int,
    description: str,
    instance_number: int = 1,
    sop_instance_uid: str | None = None,
    series_datetime: datetime | None = None,
) -> hd.seg.Segmentation:
    """A BINARY SEG of ``mask`` over ``source_images`` (empty frames omitted).

    ``source_images``: the source series' datasets in volume order (``mask[k]`` lies on ``source_images[k]``),
    or one multi-frame dataset (``mask[k]`` lies on its frame k + 1). Headers suffice; no Pixel Data needed.
    ``mask``: [k, j, i] labels (0 = background, n = ``segments[n - 1]``) or a [k, j, i, segment] bool stack.
    ``series_datetime``: the Series Date/Time (default now).
    """
    if not source_images:
        raise ValueError("binary_segmentation needs at least one source image dataset.")
    first = source_images[0]
    expected = (_source_frames(source_images), int(first.Rows), int(first.Columns))
    if tuple(mask.shape[:3]) != expected:
        raise ValueError(
            f"mask shape {mask.shape[:3]} does not match the source images (frames, rows, columns) "
            f"{expected}."
        )
    pixels = _highdicom_mask(np.asarray(mask), segments)
    sop_instance_uid = sop_instance_uid or generate_uid()
    algorithm = provenance.algorithm_identification()
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=spec.number,
            segment_label=spec.label[:64],
            segmented_property_category=spec.category_code,
            segmented_property_type=spec.type_code,
            algorithm_type=spec.algorithm_type,
            algorithm_identification=algorithm,
            tracking_id=spec.tracking_id,
            tracking_uid=(spec.tracking_uid or _tracking_uid(sop_instance_uid, spec)) if spec.tracking_id else None,
        )
        for spec in segments
    ]
    statement = provenance.statement()
    seg = hd.seg.Segmentation(
        source_images=[result_source(first), *source_images[1:]],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        omit_empty_frames=True,
        content_label="RADINFER",
        content_description=("AI result, research use only" if statement else f"AI result {provenance.name}")[
            :64
        ],
        contributing_equipment=[provenance.contributing_equipment()],
        series_description=description[:64],
        **series_date_time(series_datetime),
        **provenance.equipment_kwargs(),
    )
    if "FrameOfReferenceUID" not in seg:
        # Projection source (DX, MG): General Image needs the orientation the source states (Type 2C).
        seg.PatientOrientation = first.get("PatientOrientation") or None
    add_image_comments(seg, provenance)
    return seg
