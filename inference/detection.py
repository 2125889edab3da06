"""Box-detection bundles on a volume: MONAI's ``RetinaNetDetector`` convention, as in the model zoo's
``lung_nodule_ct_detection``.

Such a bundle's inference.json defines a ``detector`` (and usually ``detector_ops`` that configure it, and an
``inferer`` that calls it with the network). The detector returns, per image, a dict of boxes in the
*preprocessed* image's voxel coordinates (``xyzxyz``, MONAI's StandardMode), labels and scores. radinfer runs
the bundle's preprocessing on the decoded volume, the ``detector_ops``, then the inferer (or the detector) with
the loaded network, and maps each box onto the source grid itself. The bundle's postprocessing is not run: in
the zoo it only converts boxes to world coordinates for saving to JSON.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dicom_io.types import Volume
from inference.bundle import Bundle
from inference.errors import BundleError
from inference.tasks.base import TaskContext
from inference.tasks.segmentation import Component, preprocessed, ras_affine


@dataclass(frozen=True)
class Detection:
    """One box on the source grid: [``lo_kji``, ``hi_kji``] in continuous voxel indices, its label and score."""

    lo_kji: tuple[float, float, float]
    hi_kji: tuple[float, float, float]
    label: int
    score: float


def is_detection_bundle(bundle: Bundle) -> bool:
    """Whether the bundle's inference.json defines a ``detector`` (box outputs, not a label map)."""
    return "detector" in bundle.parser


def detect_boxes(bundle: Bundle, volume: Volume, ctx: TaskContext) -> list[Detection]:
    """The bundle's boxes for ``volume``, highest score first."""
    if bundle.network is None:
        raise BundleError(f"Bundle {bundle.name!r} is not loaded; call Engine.load_all() first.")
    with torch.no_grad():
        with ctx.stage("preprocess", 0.35):
            image = preprocessed(bundle, volume)["image"]
        with ctx.stage("inference", 0.75):
            detector = bundle.get("detector")
            if isinstance(detector, torch.nn.Module):
                detector.eval()  # RetinaNetDetector wants training targets in training mode
            bundle.get("detector_ops")  # its expressions configure the detector (keys, thresholds, window)
            inferer = bundle.get("inferer")
            inputs = [image.as_tensor().to(bundle.device)]
            outputs = inferer(inputs, bundle.network) if inferer is not None else detector(inputs)
    return _detections(outputs, detector, image.affine, volume, bundle.name)


def _detections(outputs: Any, detector: Any, affine: torch.Tensor, volume: Volume, bundle: str) -> list[Detection]:
    box_key = getattr(detector, "target_box_key", "boxes")
    label_key = getattr(detector, "target_label_key", "labels")
    score_key = getattr(detector, "pred_score_key", f"{label_key}_scores")
    result = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    if not isinstance(result, dict) or box_key not in result or score_key not in result:
        raise BundleError(
            f"Bundle {bundle!r}: the detector returned {type(result).__name__}, not a dict with {box_key!r} and "
            f"{score_key!r}; radinfer reads RetinaNetDetector-style outputs."
        )
    boxes = torch.as_tensor(result[box_key]).detach().cpu().double().numpy().reshape(-1, 6)
    scores = torch.as_tensor(result[score_key]).detach().cpu().double().numpy().reshape(-1)
    labels = torch.as_tensor(result.get(label_key, torch.zeros(len(scores)))).detach().cpu().numpy().reshape(-1)
    to_source = np.linalg.inv(ras_affine(volume)) @ torch.as_tensor(affine).double().cpu().numpy()
    found = []
    for box, score, label in zip(boxes, scores, labels, strict=True):
        lo, hi = box_to_source(box, to_source)
        found.append(Detection(tuple(lo), tuple(hi), int(label), float(score)))
    return sorted(found, key=lambda d: d.score, reverse=True)


def box_to_source(box: np.ndarray, to_source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An ``xyzxyz`` box in model-grid voxel coordinates as the (k, j, i) bounds of its 8 corners mapped by
    ``to_source`` (model-grid index -> source index, 4 x 4)."""
    corners = np.array([[*c, 1.0] for c in itertools.product(*zip(box[:3], box[3:], strict=True))])
    mapped = (to_source @ corners.T)[:3].T
    return mapped.min(axis=0), mapped.max(axis=0)


def seed_component(detection: Detection, volume: Volume) -> tuple[Component, np.ndarray] | None:
    """The ellipsoid inscribed in ``detection``'s box as a Component with its bounding-box mask (what a
    segmentation bundle's thresholded component gives the measurement step), or None when it holds no voxel of
    the volume."""
    lo = np.asarray(detection.lo_kji)
    hi = np.asarray(detection.hi_kji)
    start = np.clip(np.floor(lo).astype(int), 0, volume.shape)
    stop = np.clip(np.ceil(hi).astype(int) + 1, 0, volume.shape)
    if np.any(stop <= start):
        return None
    grid = np.meshgrid(*(np.arange(a, b) for a, b in zip(start, stop, strict=True)), indexing="ij")
    centre, radius = (lo + hi) / 2, np.maximum((hi - lo) / 2, 0.5)
    mask = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius, strict=True)) <= 1.0
    if not mask.any():
        return None
    points = np.argwhere(mask) + start
    centroid = points.mean(axis=0)
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    component = Component(
        label=1,
        voxels=len(points),
        volume_mm3=len(points) * volume.voxel_mm3,
        centroid_kji=tuple(float(v) for v in centroid),
        centroid_lps=tuple(float(v) for v in volume.index_to_lps(centroid).ravel()),
        bbox_kji=(tuple(int(v) for v in start), tuple(int(v) for v in stop)),
        mean_intensity=float(volume.array[box][mask].mean()),
        mean_probability=detection.score,
    )
    return component, mask
