"""Input checks for screening mammography: which images are usable mammogram views, one per view.

A screening study has four views: R CC, R MLO, L CC, L MLO. Each image must state its laterality
(ImageLaterality, else the series Laterality) and its view (ViewPosition, else the first ViewCodeSequence
code) without a work-up view modifier (spot compression, magnification...), be For Presentation, decode
within the limits, and look like a mammogram: not blank or nearly uniform, with one bright
connected breast region on a dark background. When a view is present more than once, the latest image is
used (by AcquisitionDateTime, else ContentDate/ContentTime, then InstanceNumber and SOP Instance UID): a
repeated view is normally a retake that replaces the earlier one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dicom_io.errors import InputRejected
from dicom_io.image2d import load_image2d
from dicom_io.limits import Limits
from dicom_io.types import Image2D, InstanceHeader, Series

SCREENING_VIEWS = (("R", "CC"), ("R", "MLO"), ("L", "CC"), ("L", "MLO"))
# SNOMED CT view codes (CID 4014) for images that carry ViewCodeSequence but no ViewPosition.
_VIEW_CODES = {"399162004": "CC", "399368009": "MLO"}
# View modifiers (CID 4015) that leave a screening view a screening view; any other (spot compression,
# magnification, rolled, cleavage...) makes it a diagnostic work-up image of part of the breast.
_SCREENING_MODIFIERS = {"399209000"}  # implant displaced
_FOR_PROCESSING_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.1.2.1", "1.2.840.10008.5.1.4.1.1.1.1.1"}
_MIN_SIDE_PX = 64
_MAX_ASPECT = 3.0
_BREAST_FRACTION = (0.05, 0.95)  # share of the image the breast region may cover
_MAIN_REGION_SHARE = 0.6  # the largest bright region holds at least this share of the bright pixels
_MIN_CONTRAST = 0.02  # (p99 - p1) relative to the image's value scale
_BACKGROUND_LEVEL = 0.15  # breast: brighter than this share of the way from the 1st to the 99th percentile
_REGION_MAX_SIDE = 1024  # pixels: the breast region is found on a sampling of larger images


@dataclass
class View:
    """One usable mammogram view with its decoded image and breast mask (source grid)."""

    series: Series
    instance: InstanceHeader
    image: Image2D
    laterality: str
    view: str
    breast: np.ndarray

    @property
    def label(self) -> str:
        return f"{self.laterality} {self.view}"


@dataclass
class ViewSelection:
    """The images to analyse (in SCREENING_VIEWS order) and why the others were not used."""

    views: list[View]
    rejected: list[str]  # image-level rejections
    duplicates: list[str]  # which image was used where a view was repeated
    missing: list[str]  # screening views with no usable image

    @property
    def reasons(self) -> list[str]:
        missing = (
            [(f"Views missing: {', '.join(self.missing)}; the study was analysed with "
             f"{', '.join(v.label for v in self.views) or 'no view'} only")]
            if self.missing and self.views else []
        )
        return [*self.rejected, *self.duplicates, *missing]


def select_views(series: list[Series], limits: Limits) -> ViewSelection:
    """Check every image of ``series`` and keep one per screening view."""
    candidates: dict[tuple[str, str], list[View]] = {}
    rejected: list[str] = []
    for s in series:
        for instance in s.instances:
            view, why = checked_view(s, instance, limits)
            if view is None:
                rejected.append(why)
            else:
                candidates.setdefault((view.laterality, view.view), []).append(view)
    views, duplicates = [], []
    for key in SCREENING_VIEWS:
        found = sorted(candidates.get(key, []), key=_acquisition_order)
        if not found:
            continue
        chosen = found[-1]
        views.append(chosen)
        if len(found) > 1:
            others = ", ".join(v.instance.sop_instance_uid for v in found[:-1])
            duplicates.append(
                f"View {chosen.label} is present {len(found)} times: used image {chosen.instance.sop_instance_uid} "
                f"(the latest acquired), ignored {others}"
            )
    missing = [f"{lat} {view}" for lat, view in SCREENING_VIEWS if (lat, view) not in candidates]
    return ViewSelection(views, rejected, duplicates, missing)


def checked_view(series: Series, instance: InstanceHeader, limits: Limits) -> tuple[View | None, str]:
    """The usable view in ``instance``, else None and why not (one sentence naming the attribute)."""
    ds, where = instance.dataset, f"Image {instance.sop_instance_uid}"
    laterality = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").strip().upper()
    if laterality not in ("R", "L"):
        return None, (f"{where}: ImageLaterality (0020,0062) is {laterality or 'empty'}, not R or L; "
                      "a screening mammogram shows one breast")
    view = _view_position(instance)
    if view not in ("CC", "MLO"):
        return None, (f"{where}: ViewPosition (0018,5101) / ViewCodeSequence is {view or 'empty'}, not CC or "
                      "MLO; the model reads the four screening views")
    modifier = _view_modifier(instance)
    if modifier:
        return None, (f"{where}: the {view} view has the view modifier {modifier} (ViewModifierCodeSequence), a "
                      "work-up image, not a screening view; the model reads the four screening views")
    if _for_processing(instance):
        return None, (f"{where}: a For Processing image (PresentationIntentType (0008,0068) / SOP class); the "
                      "model reads For Presentation mammograms")
    try:
        image = load_image2d(instance, limits)
    except InputRejected as exc:
        return None, f"{where}: the image could not be read ({exc})"
    array = image.array
    rows, cols = array.shape
    if min(rows, cols) < _MIN_SIDE_PX or max(rows, cols) / min(rows, cols) > _MAX_ASPECT:
        return None, (f"{where}: {rows}x{cols} pixels is not a plausible mammogram (at least {_MIN_SIDE_PX} "
                      f"pixels a side, aspect ratio at most {_MAX_ASPECT:.0f}:1)")
    breast, why = breast_region(array)
    if breast is None:
        return None, f"{where}: {why}"
    return View(series, instance, image, laterality, view, breast), ""


def breast_region(array: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The breast mask (bright region on a dark background), else None and why the image is not breast-like.

    Found on every n-th pixel so that the longest side is at most ``_REGION_MAX_SIDE`` (a 3328 x 2560 detector
    image: every 4th, 3.8 s -> 0.3 s), then each sample's mask value is given to its n x n block: the outline
    is exact to n pixels, ample for where a heat map may lie and what is breast.
    """
    if not np.isfinite(array).all():
        return None, "the pixel data holds non-finite values"
    step = -(-max(array.shape) // _REGION_MAX_SIDE)
    breast, why = _breast_region(array[::step, ::step])
    if breast is None or step == 1:
        return breast, why
    blocks = np.repeat(np.repeat(breast, step, axis=0), step, axis=1)
    return np.ascontiguousarray(blocks[: array.shape[0], : array.shape[1]]), ""


def _breast_region(array: np.ndarray) -> tuple[np.ndarray | None, str]:
    low, high = np.percentile(array, (1, 99))
    scale = max(float(np.abs(array).max()), 1.0)
    if (high - low) / scale < _MIN_CONTRAST:
        return None, "the pixel data is blank or nearly uniform, there is no mammogram to read"
    bright = ndimage.binary_opening(array > low + _BACKGROUND_LEVEL * (high - low), iterations=2)
    labels, count = ndimage.label(bright)
    fraction = bright.mean()
    if count == 0 or not _BREAST_FRACTION[0] <= fraction <= _BREAST_FRACTION[1]:
        return None, (f"no breast region: the bright part covers {fraction:.0%} of the image (a mammogram's breast "
                      f"covers {_BREAST_FRACTION[0]:.0%}-{_BREAST_FRACTION[1]:.0%} on a dark background)")
    sizes = np.bincount(labels.ravel())[1:]
    if sizes.max() < _MAIN_REGION_SHARE * sizes.sum():
        return None, (f"no breast region: the bright part is scattered over {count} pieces, the largest holds "
                      f"{sizes.max() / sizes.sum():.0%} of it (a mammogram shows one breast)")
    breast = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)
    return breast, ""


def _view_position(instance: InstanceHeader) -> str:
    ds = instance.dataset
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view:
        return view
    for item in ds.get("ViewCodeSequence", []) or []:
        return _VIEW_CODES.get(str(item.get("CodeValue", "")), str(item.get("CodeMeaning", "")).upper())
    return ""


def _view_modifier(instance: InstanceHeader) -> str:
    """The meaning of the first view modifier that makes the image other than a screening view, else ''."""
    for item in instance.dataset.get("ViewCodeSequence", []) or []:
        for modifier in item.get("ViewModifierCodeSequence", []) or []:
            if str(modifier.get("CodeValue", "")) not in _SCREENING_MODIFIERS:
                return str(modifier.get("CodeMeaning", "") or modifier.get("CodeValue", "") or "unnamed")
    return ""


def _for_processing(instance: InstanceHeader) -> bool:
    ds = instance.dataset
    intent = str(ds.get("PresentationIntentType", "") or "").strip().upper()
    return intent == "FOR PROCESSING" or str(ds.get("SOPClassUID", "")) in _FOR_PROCESSING_SOP_CLASSES


def _acquisition_order(view: View) -> tuple[str, int, str]:
    ds = view.instance.dataset
    when = str(ds.get("AcquisitionDateTime", "") or "") or (
        str(ds.get("ContentDate", "") or "") + str(ds.get("ContentTime", "") or ""))
    try:
        number = int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        number = 0
    return when, number, view.instance.sop_instance_uid
