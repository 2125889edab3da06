"""Lung nodules on chest CT: detection -> nodules measured on the source grid -> Lung-RADS v2022 suggestion,
SEG, SR, key images.

The network runs through ``segmentation.run_bundle_3d`` (the bundle's own preprocessing, sliding window and
inversion to the source grid). Its job is detection and rough extent: each thresholded component that looks
like a nodule (volume, confidence, elongation) is then delineated on the source-resolution HU data
(``delineate``: half-maximum region within a margin of the network's mask, pleura and vessels cut off, as
semi-automatic volumetry tools do), and measured:

- centroid (LPS mm and slice), long and short axis in the axial plane on the slice where the nodule is
  largest (``axial_axes``), mean diameter, volume, mean HU, confidence (the network's mean probability),
- type (``nodule_type``) from the share of the volume that is the solid component (voxels at or above
  ``solid_hu``; in a nodule with a ground-glass rim only the solid voxels not reaching its surface),
- side (LPS +x is the patient's left, relative to the body midline) and zone (upper / middle / lower third
  of the lungs' craniocaudal extent); lobes are not told apart,
- a Lung-RADS v2022 baseline category per nodule (``lung_rads_category``) and for the study from the most
  suspicious nodule, always marked as a suggestion: priors, growth and clinical context are unknown.

A box-detection bundle (inference.json defines a ``detector``, as the MONAI model zoo's RetinaNet
``lung_nodule_ct_detection`` does; see ``inference.detection``) goes through the same measurement: each box of
label ``nodule_label`` (0) scoring at least ``min_confidence`` (0.5 for detectors) seeds the delineation with the
ellipsoid inscribed in it, and its score is the finding's confidence.

radinfer.json keys (all optional): ``probability_threshold`` (0.5), ``min_component_mm3`` (8),
``max_component_mm3``, ``max_elongation``, ``min_confidence``, ``max_components_per_label`` (20),
``nodule_type`` {``solid_hu`` -300, ``ground_glass_max_solid_fraction`` 0.015, ``solid_min_solid_fraction``
0.5}, ``delineation`` (the fields of ``Delineation``), ``labels`` (as for the segmentation task).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code as DicomCode
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from dicom_io.types import Series, Study, Volume
from dicom_io.volume import build_volume
from dicom_io.writers.identity import ResultSet
from dicom_io.writers.sc import secondary_capture
from dicom_io.writers.seg import SegmentSpec, binary_segmentation
from dicom_io.writers.sr import MeasurementGroupSpec, SegmentROI, measurement_report
from inference.bundle import Bundle
from inference.detection import detect_boxes, is_detection_bundle, seed_component
from inference.engine import result_provenance
from inference.errors import BundleError
from inference.findings import Code, Finding, Measurement, ReportStatus
from inference.parallel import parallel_map
from inference.tasks.base import Artifact, TaskContext, TaskResult, save_picture
from inference.tasks.segmentation import (
    MASK_ARTIFACT,
    Component,
    component_finding,
    components,
    foreground_box,
    label_specs,
    run_bundle_3d,
    write_mask_npz,
)

SOLID, PART_SOLID, GROUND_GLASS = "solid", "part-solid", "ground-glass"
LUNG_RADS_ORDER = ("1", "2", "3", "4A", "4B")
SUGGESTION_NOTE = (
    "Lung-RADS v2022 baseline category suggested by a research model from the most suspicious nodule; "
    "priors, growth and clinical context are unknown, so a radiologist must assign the category."
)
NO_NODULE_NOTE = "No lung nodule found by the model (0 nodules)."
TILT_NOTE_DEG = 1.0
TILT_NOTE = (
    "The series was acquired with a gantry tilt (its slices shift in-plane along the stack). The model was trained "
    "on untilted series; nodule sizes and volumes on a tilted series are less reliable (a 5 degree tilt changed "
    "one phantom nodule's volume by 30%)."
)
SEG_SERIES_NUMBER, SR_SERIES_NUMBER, KEY_SERIES_NUMBER = 9101, 9102, 9103
LUNG_WINDOW_HU = (-1350.0, 150.0)
KEY_IMAGE_MIN_PX = 512
MM, MM3 = codes.UCUM.Millimeter, codes.UCUM.CubicMillimeter
HU_UNIT = DicomCode("[hnsf'U]", "UCUM", "Hounsfield unit")
NODULE_TYPE = DicomCode("NODULETYPE", "99RADINFER", "Nodule type")
LUNG_RADS = DicomCode("LUNGRADS", "99RADINFER", "Lung-RADS v2022 category suggestion")
TYPE_CODES = {
    SOLID: DicomCode("SOLID", "99RADINFER", "Solid nodule"),
    PART_SOLID: DicomCode("PART-SOLID", "99RADINFER", "Part-solid nodule"),
    GROUND_GLASS: codes.DCM.GroundGlassOpacity,
}
_BODY_HU, _AIR_HU, _COARSE_MM, _MIN_LUNG_ML = -500.0, -400.0, 4.0, 20.0
_CUBE = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


# --- Lung-RADS ------------------------------------------------------------------------------------


def lung_rads_category(nodule_type: str, mean_diameter_mm: float, solid_mean_diameter_mm: float = 0.0) -> str:
    """Lung-RADS v2022 baseline category of one nodule (mean diameters in mm, rounded to 0.1 mm)."""
    d, s = round(mean_diameter_mm, 1), round(solid_mean_diameter_mm, 1)
    if nodule_type == SOLID:
        return "2" if d < 6 else "3" if d < 8 else "4A" if d < 15 else "4B"
    if nodule_type == PART_SOLID:
        if d < 6:
            return "2"
        return "3" if s < 6 else "4A" if s < 8 else "4B"
    if nodule_type == GROUND_GLASS:
        return "2" if d < 30 else "3"
    raise ValueError(f"Unknown nodule type {nodule_type!r}; use solid, part-solid or ground-glass.")


def study_category(categories: list[str]) -> str:
    """The study's category: the most suspicious nodule's, or 1 (negative) without nodules."""
    return max(categories, key=LUNG_RADS_ORDER.index, default="1")


# --- measurements ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxialAxes:
    """Long axis (maximum Feret diameter) and short axis (largest width perpendicular to it) on ``slice_k``."""

    long_mm: float
    short_mm: float
    slice_k: int

    @property
    def mean_mm(self) -> float:
        return (self.long_mm + self.short_mm) / 2


def axial_axes(mask: np.ndarray, spacing_ji: tuple[float, float]) -> AxialAxes | None:
    """Axes of boolean ``mask[k, j, i]`` on the slice with the largest area (None for an empty mask).

    Pixels are squares of ``spacing_ji`` mm: both axes are measured on their corners, so one pixel is one
    pixel wide rather than zero.
    """
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    if not areas.any():
        return None
    k = int(np.argmax(areas))
    rows, cols = np.nonzero(mask[k])
    corners = np.concatenate(
        [np.stack([rows + dr, cols + dc], axis=1) for dr in (-0.5, 0.5) for dc in (-0.5, 0.5)]
    ) * np.asarray(spacing_ji, dtype=np.float64)
    try:
        points = corners[ConvexHull(corners).vertices]
    except QhullError:  # collinear corners cannot happen for squares, but keep a safe fallback
        points = corners
    gaps = points[:, None, :] - points[None, :, :]
    lengths = np.hypot(gaps[..., 0], gaps[..., 1])
    a, b = np.unravel_index(int(np.argmax(lengths)), lengths.shape)
    long_mm = float(lengths[a, b])
    direction = gaps[a, b] / long_mm
    across = points @ np.array([-direction[1], direction[0]])
    return AxialAxes(long_mm=long_mm, short_mm=float(across.max() - across.min()), slice_k=k)


def nodule_type(solid_fraction: float, settings: dict) -> str:
    """Solid / part-solid / ground-glass from the share of the nodule's volume that is its solid component."""
    if solid_fraction <= float(settings.get("ground_glass_max_solid_fraction", 0.015)):
        return GROUND_GLASS
    if solid_fraction >= float(settings.get("solid_min_solid_fraction", 0.5)):
        return SOLID
    return PART_SOLID


@dataclass(frozen=True)
class ChestGeometry:
    """Body midline (LPS x, mm) and the lungs' craniocaudal extent (LPS z, mm), from a coarse grid."""

    midline_x: float
    lung_z: tuple[float, float] | None


def chest_geometry(volume: Volume) -> ChestGeometry:
    """Body = voxels above -500 HU; lungs = enclosed air (below -400 HU, not touching the in-plane border)."""
    step = tuple(max(1, round(_COARSE_MM / s)) for s in volume.spacing)
    coarse = volume.array[:: step[0], :: step[1], :: step[2]]
    scale = np.asarray(step, dtype=np.float64)
    body = coarse > _BODY_HU
    centre = np.argwhere(body).mean(axis=0) * scale if body.any() else (np.asarray(volume.shape) - 1) / 2
    midline_x = float(volume.index_to_lps(centre)[0])
    air, count = ndimage.label(coarse < _AIR_HU)
    border = np.unique(np.concatenate([air[:, [0, -1], :].ravel(), air[:, :, [0, -1]].ravel()]))
    sizes = np.bincount(air.ravel(), minlength=count + 1)
    voxel_ml = float(np.prod(np.asarray(volume.spacing) * scale)) / 1000.0
    keep = np.flatnonzero(sizes * voxel_ml >= _MIN_LUNG_ML)
    keep = np.setdiff1d(keep, np.append(border, 0))
    if keep.size == 0:
        return ChestGeometry(midline_x=midline_x, lung_z=None)
    slices = np.flatnonzero(np.isin(air, keep).any(axis=(1, 2))) * scale[0]
    z = volume.index_to_lps(np.array([[slices.min(), centre[1], centre[2]], [slices.max(), centre[1], centre[2]]]))[
        :, 2
    ]
    return ChestGeometry(midline_x=midline_x, lung_z=(float(z.min()), float(z.max())))


def side_and_zone(lps: tuple[float, float, float], chest: ChestGeometry) -> tuple[str, str | None]:
    """("left"|"right", "upper"|"middle"|"lower"|None): LPS +x is the patient's left; z grows toward the head."""
    side = "left" if lps[0] > chest.midline_x else "right"
    if chest.lung_z is None or chest.lung_z[1] <= chest.lung_z[0]:
        return side, None
    fraction = (lps[2] - chest.lung_z[0]) / (chest.lung_z[1] - chest.lung_z[0])
    return side, "upper" if fraction > 2 / 3 else "lower" if fraction < 1 / 3 else "middle"


# --- delineation at source resolution -------------------------------------------------------------


@dataclass(frozen=True)
class Delineation:
    """Settings of ``delineate`` (radinfer.json ``delineation``; HU and mm)."""

    solid_hu: float = -300.0
    ground_glass_hu: float = -750.0
    parenchyma_max_hu: float = -700.0
    parenchyma_hu: float = -850.0
    search_margin_mm: float = 3.0
    search_margin_ratio: float = 0.5
    subsolid_rim_share: float = 0.1
    vessel_opening_ratio: float = 0.6

    def margin_mm(self, seed_radius_mm: float) -> float:
        """How far beyond the network's mask the nodule is looked for: the network under-segments, more so
        for large nodules."""
        return self.search_margin_mm + self.search_margin_ratio * seed_radius_mm

    @classmethod
    def from_settings(cls, radinfer: dict) -> Delineation:
        """From radinfer.json: ``delineation`` and ``nodule_type.solid_hu``."""
        values = dict(radinfer.get("delineation") or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise BundleError(f"radinfer.json 'delineation' has unknown key(s) {unknown}; valid keys are "
                              f"{[f.name for f in fields(cls)]}.")
        solid_hu = (radinfer.get("nodule_type") or {}).get("solid_hu")
        if solid_hu is not None:
            values.setdefault("solid_hu", solid_hu)
        return cls(**{k: float(v) for k, v in values.items()})


def delineate(hu: np.ndarray, seed: np.ndarray, spacing: tuple[float, float, float],
              settings: Delineation) -> tuple[np.ndarray, np.ndarray] | None:
    """Nodule and solid-component masks around the network's ``seed`` mask, measured on the HU values ``hu``
    (same box, source spacing); None when no region above the thresholds overlaps the seed.

    The network finds the nodule; its extent is measured here, as semi-automatic volumetry does: the region is
    the voxels above the half-maximum between the local lung parenchyma and the nodule's edge attenuation
    (solid, or ground glass when the nodule has a ground-glass rim), within ``margin_mm`` of the seed.
    Chest wall and mediastinum (dense tissue wide enough to hold a ball larger than the search region) are cut
    off at the pleura; vessels by an opening with a ball of ``vessel_opening_ratio`` times the radius of the
    largest ball inside the nodule (so a vessel keeps at most a small fillet where it meets the nodule).
    The solid component of a subsolid nodule is its solid voxels not reaching its surface on the lung side (so a
    vessel at the edge is not counted).
    """
    seed_radius = float(np.cbrt(3 * seed.sum() * np.prod(spacing) / (4 * np.pi)))
    margin = settings.margin_mm(seed_radius)
    search = _near_mm(seed, margin, spacing)
    parenchyma = hu[~search & (hu < settings.parenchyma_max_hu)]
    background = float(np.median(parenchyma)) if parenchyma.size >= 20 else settings.parenchyma_hu
    wall_radius = seed_radius + margin

    search_box = foreground_box(search)

    def region(threshold: float, opening_radius: float) -> np.ndarray:
        dense = hu >= threshold
        candidate = dense & search & ~_opening_mm(dense, wall_radius, spacing, within=search_box)
        opened = _overlapping(_opening_mm(candidate, opening_radius, spacing), seed)
        return opened if opened.any() else _overlapping(candidate, seed)  # nodules too small to open

    first = region(settings.ground_glass_hu, 0.0)
    if not first.any():
        return None
    solid = first & (hu >= settings.solid_hu)
    rim = first & ~ndimage.binary_dilation(solid, structure=_CUBE)
    subsolid = bool(rim.sum() > settings.subsolid_rim_share * first.sum())
    edge_hu = float(np.median(hu[rim] if subsolid else hu[solid]))
    inside = _grown(foreground_box(first), [1, 1, 1], first.shape)  # a rim of background: the same inside distances
    inscribed_mm = float(ndimage.distance_transform_edt(first[inside], sampling=spacing).max())
    threshold = (background + edge_hu) / 2
    mask = region(threshold, settings.vessel_opening_ratio * inscribed_mm)
    if not mask.any():
        return None
    solid = mask & (hu >= settings.solid_hu)
    if subsolid:  # the lung side of the surface: a core that reaches the pleura is still the solid component
        surface = ndimage.binary_dilation(~mask & (hu < threshold), structure=_CUBE)
        pieces, _ = ndimage.label(solid, structure=_CUBE)
        touching = np.unique(pieces[surface & solid])
        solid &= ~np.isin(pieces, touching[touching > 0])
    return mask, solid



def _opening_mm(
    mask: np.ndarray, radius_mm: float, spacing: tuple[float, float, float],
    within: tuple[slice, ...] | None = None,
) -> np.ndarray:
    """Morphological opening of ``mask`` by a ball of ``radius_mm`` (Euclidean distance transforms, so the
    cost does not grow with the radius); the empty mask when no ball fits. With ``within`` (a box) the result
    is exact only inside that box, which is all the caller reads: the distance transforms then run on the
    smallest boxes that give the same values there."""
    if radius_mm <= 0 or not mask.any():
        return mask
    inside = _grown(foreground_box(mask), [1, 1, 1], mask.shape)  # a rim of background: the same inside distances
    core = np.zeros_like(mask)
    core[inside] = ndimage.distance_transform_edt(mask[inside], sampling=spacing) > radius_mm
    if not core.any():
        return np.zeros_like(mask)
    return _near_mm(core, radius_mm, spacing, within=within)


def _near_mm(
    mask: np.ndarray, distance_mm: float, spacing: tuple[float, float, float],
    within: tuple[slice, ...] | None = None,
) -> np.ndarray:
    """Voxels within ``distance_mm`` of a True voxel of ``mask``: exact everywhere, or (with ``within``) inside
    that box. The distance transform runs on the box around ``mask``'s voxels (or ``within``) grown by the
    distance: no voxel beyond it can be that near to a voxel the result must be exact for."""
    near = np.zeros_like(mask)
    if not mask.any():
        return near
    steps = [int(np.ceil(distance_mm / s)) + 1 for s in spacing]
    reach = _grown(foreground_box(mask) if within is None else within, steps, mask.shape)
    if mask[reach].any():  # with no zero in its input scipy measures to a point outside the array
        near[reach] = ndimage.distance_transform_edt(~mask[reach], sampling=spacing) <= distance_mm
    return near


def _grown(box: tuple[slice, ...], steps: list[int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` grown by ``steps[axis]`` voxels along each axis, clipped to ``shape``."""
    return tuple(slice(max(0, b.start - n), min(size, b.stop + n)) for b, n, size in zip(box, steps, shape,
                                                                                          strict=True))


def _overlapping(candidate: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The connected piece of ``candidate`` that overlaps ``seed`` most (empty when none does)."""
    pieces, count = ndimage.label(candidate, structure=_CUBE)
    if count == 0:
        return candidate
    overlap = np.bincount(pieces[seed], minlength=count + 1)
    overlap[0] = 0
    best = int(np.argmax(overlap))
    return pieces == best if overlap[best] > 0 else np.zeros_like(candidate)


@dataclass
class Nodule:
    """One measured nodule; ``number`` is its 1-based rank (largest first) and its SEG segment number."""

    number: int
    component: Component  # the delineated nodule (the network's confidence)
    mask: np.ndarray  # bool, the component's bounding box
    axes: AxialAxes  # slice_k relative to the bounding box
    solid_axes: AxialAxes | None
    type: str
    solid_fraction: float
    side: str
    zone: str | None
    category: str

    @property
    def key_slice(self) -> int:
        return self.component.bbox_kji[0][0] + self.axes.slice_k


@dataclass(frozen=True)
class Outline:
    """A delineated nodule: ``mask`` and its solid component ``solid``, both in ``component``'s bounding box."""

    component: Component
    mask: np.ndarray
    solid: np.ndarray


def outline_nodules(
    found: list[tuple[Component, np.ndarray]], volume: Volume, settings: Delineation
) -> list[Outline]:
    """Delineate each detected component (with its bounding-box mask) on the source grid (``delineate``).

    A region mostly (over half) covered by an earlier, larger one is the same nodule and is dropped, and so is a
    component with nothing to delineate (inside the chest wall or mediastinum).
    """
    spacing = tuple(float(s) for s in volume.spacing)

    def delineate_in_box(
        item: tuple[Component, np.ndarray],
    ) -> tuple[tuple[slice, ...], tuple[np.ndarray, np.ndarray] | None]:
        component, component_mask = item
        seed_radius = float(np.cbrt(3 * component.volume_mm3 / (4 * np.pi)))
        pad_mm = 3 * settings.margin_mm(seed_radius) + 2 * seed_radius
        lo = [max(0, a - int(np.ceil(pad_mm / s))) for a, s in zip(component.bbox_kji[0], spacing, strict=True)]
        hi = [min(n, b + int(np.ceil(pad_mm / s))) for b, s, n in zip(component.bbox_kji[1], spacing, volume.shape,
                                                                     strict=True)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        seed = np.zeros([b - a for a, b in zip(lo, hi, strict=True)], dtype=bool)
        seed[tuple(slice(a - c, b - c) for a, b, c in zip(*component.bbox_kji, lo, strict=True))] = component_mask
        return box, delineate(volume.array[box].astype(np.float32, copy=False), seed, spacing, settings)

    taken = np.zeros(volume.shape, dtype=bool)
    outlines = []
    # the delineations are independent (scipy's distance transforms release the GIL); merging them is in order
    for (component, _), (box, result) in zip(found, parallel_map(delineate_in_box, found), strict=True):
        if result is None:  # nothing above the thresholds outside chest wall and mediastinum: not a lung nodule
            continue
        lo = [side.start for side in box]
        hu = volume.array[box].astype(np.float32, copy=False)
        mask, solid = result
        if np.count_nonzero(mask & taken[box]) * 2 > np.count_nonzero(mask):
            continue
        mask &= ~taken[box]
        taken[box] |= mask
        tight = ndimage.find_objects(mask.astype(np.uint8))[0]
        points = np.argwhere(mask)
        centroid = points.mean(axis=0) + np.asarray(lo)
        start = tuple(int(a + t.start) for a, t in zip(lo, tight, strict=True))
        stop = tuple(int(a + t.stop) for a, t in zip(lo, tight, strict=True))
        delineated = replace(
            component,
            voxels=len(points),
            volume_mm3=len(points) * volume.voxel_mm3,
            centroid_kji=tuple(float(v) for v in centroid),
            centroid_lps=tuple(float(v) for v in volume.index_to_lps(centroid).ravel()),
            bbox_kji=(start, stop),
            mean_intensity=float(hu[mask].mean()),
        )
        outlines.append(Outline(delineated, mask[tight], solid[tight] & mask[tight]))
    return sorted(outlines, key=lambda o: o.component.volume_mm3, reverse=True)


def measure_nodules(outlines: list[Outline], volume: Volume, settings: dict) -> list[Nodule]:
    """Measure each delineated nodule; numbers follow ``outlines`` (largest first)."""
    chest = chest_geometry(volume)
    spacing_ji = (float(volume.spacing[1]), float(volume.spacing[2]))
    nodules = []
    for n, outline in enumerate(outlines, start=1):
        solid_fraction = float(outline.solid.sum() / max(outline.mask.sum(), 1))
        kind = nodule_type(solid_fraction, settings)
        axes = axial_axes(outline.mask, spacing_ji)
        solid_axes = axial_axes(outline.solid, spacing_ji) if kind != GROUND_GLASS else None
        side, zone = side_and_zone(outline.component.centroid_lps, chest)
        category = lung_rads_category(kind, axes.mean_mm, solid_axes.mean_mm if solid_axes else 0.0)
        nodules.append(Nodule(n, outline.component, outline.mask, axes, solid_axes, kind, solid_fraction, side,
                              zone, category))
    return nodules


# --- findings -------------------------------------------------------------------------------------


def nodule_finding(nodule: Nodule, volume: Volume, name: str, code: Code | None) -> Finding:
    finding = component_finding(nodule.component, volume, name=name, code=code, segment_number=nodule.number)
    axes = nodule.axes
    finding.measurements += [
        Measurement(name="long_axis", value=round(axes.long_mm, 1), unit="mm",
                    code=Code(value="103339001", scheme="SCT", meaning="Long axis")),
        Measurement(name="short_axis", value=round(axes.short_mm, 1), unit="mm",
                    code=Code(value="103340004", scheme="SCT", meaning="Short axis")),
        Measurement(name="mean_diameter", value=round(axes.mean_mm, 1), unit="mm",
                    code=Code(value="81827009", scheme="SCT", meaning="Diameter")),
    ]
    if nodule.solid_axes is not None and nodule.type == PART_SOLID:
        finding.measurements.append(
            Measurement(name="solid_mean_diameter", value=round(nodule.solid_axes.mean_mm, 1), unit="mm")
        )
    assert finding.location is not None
    finding.location.description = f"{nodule.side} lung" + (f", {nodule.zone} zone" if nodule.zone else "")
    finding.attributes = {
        "number": nodule.number,
        "type": nodule.type,
        "solid_fraction": round(nodule.solid_fraction, 3),
        "side": nodule.side,
        "zone": nodule.zone,
        "key_slice": nodule.key_slice,
        "lung_rads_suggestion": nodule.category,
    }
    return finding


# --- DICOM and PNG artifacts ----------------------------------------------------------------------


def source_datasets(volume: Volume) -> list[Dataset]:
    """Header datasets in volume order (one multi-frame dataset when the series is a single enhanced image)."""
    by_uid = {h.sop_instance_uid: h.dataset for h in volume.series.instances}
    uids = [ref.sop_instance_uid for ref in volume.slice_refs]
    if len(set(uids)) == 1 and len(uids) > 1:
        return [by_uid[uids[0]]]
    return [by_uid[uid] for uid in uids]


def nodule_label_map(nodules: list[Nodule], shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 [k, j, i]: 0 background, n = nodule n (its SEG segment number)."""
    labels = np.zeros(shape, dtype=np.uint8)
    for nodule in nodules:
        box = tuple(slice(lo, hi) for lo, hi in zip(*nodule.component.bbox_kji, strict=True))
        labels[box][nodule.mask] = nodule.number
    return labels


def key_image(volume: Volume, nodule: Nodule) -> np.ndarray:
    """RGB uint8 axial slice in a lung window with the nodule outlined and its measurements written on it.

    Slices smaller than ``KEY_IMAGE_MIN_PX`` are enlarged by an integer factor so the text stays readable.
    """
    k = nodule.key_slice
    lo, hi = LUNG_WINDOW_HU
    gray = ((np.clip(volume.array[k], lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    (k0, j0, i0), (_, j1, i1) = nodule.component.bbox_kji
    region = nodule.mask[k - k0]
    outline = region & ~ndimage.binary_erosion(region)
    rgb[j0:j1, i0:i1][outline] = (255, 200, 0)
    scale = max(1, -(-KEY_IMAGE_MIN_PX // min(rgb.shape[:2])))
    image = Image.fromarray(rgb.repeat(scale, axis=0).repeat(scale, axis=1))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(12, image.width // 40))
    axes = nodule.axes
    lines = [
        f"Nodule {nodule.number}: {nodule.type}, {axes.long_mm:.1f} x {axes.short_mm:.1f} mm",
        f"mean {axes.mean_mm:.1f} mm, {nodule.component.volume_mm3:.0f} mm3",
        f"{nodule.side} lung" + (f", {nodule.zone} zone" if nodule.zone else ""),
        f"Lung-RADS {nodule.category} (suggestion only)",
        "Research use only; trained on synthetic phantoms",
    ]
    draw.multiline_text((6, 6), "\n".join(lines), fill=(255, 255, 0), font=font)
    return np.asarray(image)


def write_artifacts(
    bundle: Bundle, volume: Volume, nodules: list[Nodule], findings: list[Finding], study_category_: str,
    ctx: TaskContext,
) -> list[Artifact]:
    """sr.dcm, and with nodules seg.dcm and key_nodule_<n>.dcm/.png per nodule.

    A study without nodules still gets its SR (no measurement group; the study's Lung-RADS suggestion and "no
    nodule found"), so a reader in the PACS can tell that the model ran and found nothing.
    """
    sources = source_datasets(volume)
    results = ResultSet.of(result_provenance(bundle), sources)
    artifacts: list[Artifact] = []
    groups = []
    if nodules:
        seg = binary_segmentation(
            sources,
            nodule_label_map(nodules, volume.shape),
            [SegmentSpec(number=n.number, label=f"Nodule {n.number}", tracking_id=f"Nodule {n.number}")
             for n in nodules],
            **results.placed("seg"),
            series_number=SEG_SERIES_NUMBER,
            description="AI lung nodule segmentation",
        )
        seg.save_as(ctx.workdir / "seg.dcm", enforce_file_format=True)
        artifacts.append(Artifact("seg.dcm", "application/dicom", "DICOM SEG: one segment per nodule.",
                                  str(seg.SOPClassUID), str(seg.SOPInstanceUID)))
        groups = [
            MeasurementGroupSpec(
                roi=SegmentROI(seg, nodule.number),
                tracking_id=f"Nodule {nodule.number}",
                finding_type=codes.SCT.Nodule,
                measurements=sr_measurements(finding),
                qualitative_evaluations=[
                    (NODULE_TYPE, TYPE_CODES[nodule.type]),
                    (LUNG_RADS, _category_code(nodule.category)),
                ],
                finding_site=codes.SCT.Lung,
            )
            for nodule, finding in zip(nodules, findings, strict=True)
        ]
    sr = measurement_report(
        sources,
        groups,
        **results.placed("sr"),
        series_number=SR_SERIES_NUMBER,
        description="AI lung nodule report",
        qualitative_study_findings=[(LUNG_RADS, _category_code(study_category_))],
        study_comments=[SUGGESTION_NOTE] if nodules else [NO_NODULE_NOTE, SUGGESTION_NOTE],
    )
    sr.save_as(ctx.workdir / "sr.dcm", enforce_file_format=True)
    artifacts.append(Artifact("sr.dcm", "application/dicom",
                              "DICOM SR (TID 1500): one group per nodule, the study's Lung-RADS suggestion.",
                              str(sr.SOPClassUID), str(sr.SOPInstanceUID)))
    multiframe = len(sources) == 1 and len(volume.slice_refs) > 1
    for nodule in nodules:
        rgb = key_image(volume, nodule)
        k = nodule.key_slice
        sc = secondary_capture(
            sources[0] if multiframe else sources[k],
            rgb,
            **results.placed("sc", f"sc:{nodule.number}"),
            series_number=KEY_SERIES_NUMBER,
            instance_number=nodule.number,
            series_description="AI lung nodule key images",
            description=f"Nodule {nodule.number} key image",
            source_frame=volume.slice_refs[k].frame if multiframe else None,
            paired_body_part=False,
        )
        stem = f"key_nodule_{nodule.number}"
        artifacts += save_picture(ctx.workdir, stem, sc, rgb, f"key image of nodule {nodule.number}")
    return artifacts


# SR concept and unit of each findings measurement the SR holds, in SR order.
SR_MEASUREMENTS = {
    "long_axis": (codes.SCT.LongAxis, MM),
    "short_axis": (codes.SCT.ShortAxis, MM),
    "mean_diameter": (codes.SCT.Diameter, MM),
    "volume": (codes.SCT.Volume, MM3),
    "mean_intensity": (codes.DCM.MeanAttenuationCoefficient, HU_UNIT),
}


def sr_measurements(finding: Finding) -> list[tuple[DicomCode, float, DicomCode]]:
    """The SR's numeric items of one nodule: the findings JSON's values themselves (same rounding)."""
    values = {m.name: m.value for m in finding.measurements}
    return [(name, values[key], unit) for key, (name, unit) in SR_MEASUREMENTS.items()]


def _category_code(category: str) -> DicomCode:
    return DicomCode(f"LUNGRADS-{category}", "99RADINFER", f"Lung-RADS {category} (suggestion)")


# --- task -----------------------------------------------------------------------------------------


class LungNodulesTask:
    name: ClassVar[str] = "lung_nodules"

    def run(self, bundle: Bundle, study: Study, series: list[Series], ctx: TaskContext) -> TaskResult:
        with ctx.stage("load_volume", 0.2):
            volume = build_volume(series[0], ctx.limits)
        if is_detection_bundle(bundle):
            found = _detected_seeds(bundle, volume, ctx)
        else:
            found = _segmented_components(bundle, volume, ctx)
        settings = dict(bundle.radinfer.get("nodule_type") or {})
        with ctx.stage("findings", 0.9):
            outlines = outline_nodules(found, volume, Delineation.from_settings(bundle.radinfer))
            outlines = outlines[: int(bundle.radinfer.get("max_components_per_label", 20))]
            nodules = measure_nodules(outlines, volume, settings)
            labelled = nodule_label_map(nodules, volume.shape)
            name, code = label_specs(bundle, np.array([1]))[1]
            findings = [nodule_finding(n, volume, name, code) for n in nodules]
            category = study_category([n.category for n in nodules])
            summary: dict[str, str | float | int | bool | None] = {
                "nodules": len(nodules),
                "lung_rads_suggestion": category,
                "lung_rads_version": "v2022 (baseline rules)",
                "lung_rads_note": SUGGESTION_NOTE,
                "most_suspicious_nodule": max(nodules, key=lambda n: (LUNG_RADS_ORDER.index(n.category),
                                                                      n.axes.mean_mm)).number
                if nodules else None,
            }
            if volume.tilt_deg >= TILT_NOTE_DEG:  # the network saw a sheared grid: say so beside the sizes
                summary["gantry_tilt_deg"] = round(volume.tilt_deg, 1)
                summary["gantry_tilt_note"] = TILT_NOTE
            write_mask_npz(ctx.workdir / MASK_ARTIFACT, labelled, volume)
        with ctx.stage("write_results", 0.98):
            artifacts = [Artifact(MASK_ARTIFACT, "application/x-npz",
                                  "Nodule mask: uint8 'mask' [k, j, i] (n = nodule n), 'affine', 'spacing'.")]
            artifacts += write_artifacts(bundle, volume, nodules, findings, category, ctx)
        return TaskResult(
            status=ReportStatus.complete,
            series_used=[volume.series],
            findings=findings,
            summary=summary,
            artifacts=artifacts,
        )


def _segmented_components(bundle: Bundle, volume: Volume, ctx: TaskContext) -> list[tuple[Component, np.ndarray]]:
    """A segmentation bundle's nodule candidates: components of its thresholded probability (or label 1) that
    pass the volume, confidence and elongation limits, with their bounding-box masks."""
    output = run_bundle_3d(bundle, volume, ctx)
    with ctx.stage("findings", 0.9):
        probability = output.probability(1)
        if probability is not None:
            mask = probability >= float(bundle.radinfer.get("probability_threshold", 0.5))
        else:
            mask = output.labels == 1
        del output
        found = components(mask, volume, probability=probability,
                           min_volume_mm3=float(bundle.radinfer.get("min_component_mm3", 8.0)))
        found = [c for c in found if c.volume_mm3 <= float(bundle.radinfer.get("max_component_mm3", np.inf))
                 and (c.mean_probability or 1.0) >= float(bundle.radinfer.get("min_confidence", 0.0))]
        return _round_components(found, mask, volume, float(bundle.radinfer.get("max_elongation", np.inf)))


def _detected_seeds(bundle: Bundle, volume: Volume, ctx: TaskContext) -> list[tuple[Component, np.ndarray]]:
    """A box-detection bundle's nodule candidates (label ``nodule_label``, default 0 as in the zoo's one-class
    detector) scoring at least ``min_confidence`` (default 0.5): the ellipsoid inscribed in each box."""
    label = int(bundle.radinfer.get("nodule_label", 0))
    threshold = float(bundle.radinfer.get("min_confidence", 0.5))
    detections = detect_boxes(bundle, volume, ctx)
    with ctx.stage("findings", 0.9):
        seeds = [seed_component(d, volume) for d in detections if d.label == label and d.score >= threshold]
        return [seed for seed in seeds if seed is not None]


def _round_components(
    found: list[Component], mask: np.ndarray, volume: Volume, max_elongation: float
) -> list[tuple[Component, np.ndarray]]:
    """Components with their bounding-box masks, without tube-like ones (vessels): elongation is the ratio of
    the largest to the smallest principal extent of the component's voxels in mm."""
    kept = []
    for component in found:
        box = tuple(slice(lo, hi) for lo, hi in zip(*component.bbox_kji, strict=True))
        component_mask = _component_mask(mask[box], component, volume)
        if elongation(component_mask, volume.spacing) <= max_elongation:
            kept.append((component, component_mask))
    return kept


def elongation(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """sqrt(largest / smallest eigenvalue) of the voxel coordinates' covariance (mm), plus half a voxel."""
    points = np.argwhere(mask) * np.asarray(spacing)
    if len(points) < 4:
        return 1.0
    eigen = np.linalg.eigvalsh(np.cov(points.T)) + (min(spacing) ** 2) / 12
    return float(np.sqrt(eigen[-1] / eigen[0]))


def _component_mask(mask_box: np.ndarray, component: Component, volume: Volume) -> np.ndarray:
    """The voxels of ``component`` inside its bounding box (other components may share the box)."""
    labelled, _ = ndimage.label(mask_box, structure=ndimage.generate_binary_structure(3, 3))
    centre = np.asarray(component.centroid_kji) - np.asarray(component.bbox_kji[0])
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    # The component is the largest connected piece of its own box with exactly its voxel count.
    candidates = np.flatnonzero(sizes == component.voxels)
    if candidates.size == 1:
        return labelled == candidates[0]
    nearest = min(candidates, key=lambda c: np.linalg.norm(np.argwhere(labelled == c).mean(axis=0) - centre))
    return labelled == nearest
