"""Screening mammography as a second reader: density and suspicion per view and breast, a flag, heat maps, SR.

The four screening views of one woman (R CC, R MLO, L CC, L MLO; see ``mammography_views`` for the input
checks and the choice among repeated views) are pre-processed with the bundle's ``preprocessing`` and sent
to ``bundle.runner`` as one (N, C, H, W) request, so one study is one request on the device queue and many
studies at once share its dynamic batches.

Per image: the density category (softmax over the density logits) and the suspicion probability (sigmoid of
the suspicion logit). Per breast: density = the mean of its views' class probabilities, suspicion = the
maximum over its views. The study's result is the most suspicious breast: its suspicion against
radinfer.json ``operating_point.threshold`` gives "flag for attention" or "no flag", a second reader's
suggestion quoted with the sensitivity and specificity the model card measured at that threshold. The study
density follows BI-RADS: the denser breast's category. Each flagged image (suspicion at or above the
threshold) gets a Grad-CAM heat map (monai.visualize, class ``suspicion_logit``) mapped back to the source
pixel grid by inverting the pre-processing, with the bounding box of its top region (the connected part of
the map above half its peak that holds the peak), as a Secondary Capture and PNG in the study; the SR (TID
1500) holds per-image qualitative evaluations and the flagged regions as planar ROIs.

Status: rejected when no image is a usable mammogram view (a study without MG images is not routed here at
all: the registry answers that no model accepts it); partial when views are missing, repeated or rejected,
or when the bundle states no operating point; complete otherwise.

radinfer.json keys read here: ``outputs`` {"density_logits": [start, stop], "suspicion_logit": index}
(without ``suspicion_logit`` the bundle is density-only: no flag, no heat map), ``density_classes``,
``operating_point`` {"threshold", "sensitivity", "specificity", "measured_on"}, ``input_channels`` (a
grayscale image is repeated to this many channels, e.g. 3 for an ImageNet-style network). inference.json:
``preprocessing`` (on {"image": (1, H, W) MetaTensor, larger = brighter}), ``gradcam_layer``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from monai.data import MetaTensor
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from scipy import ndimage

from dicom_io.types import Series, Study
from dicom_io.writers.identity import ResultSet
from dicom_io.writers.sc import heat_map_overlay, secondary_capture
from dicom_io.writers.sr import MeasurementGroupSpec, PlanarROI, WholeImage, measurement_report
from inference.attention import grad_cam
from inference.bundle import Bundle
from inference.engine import result_provenance
from inference.errors import BundleError
from inference.findings import Code as FindingCode
from inference.findings import Finding, Location, Measurement, ReportStatus, SourceRef
from inference.tasks.base import Artifact, TaskContext, TaskResult, save_picture
from inference.tasks.mammography_views import View, select_views

_SCHEME = "99RADINFER"
BREAST_COMPOSITION = codes.DCM.BreastComposition  # DCM 111006, as in the Mammography CAD SR (TID 4006)
# BI-RADS density categories (CID 6001 Overall Breast Composition from BI-RADS).
DENSITY_CODES = {
    "A": codes.cid6001.AlmostEntirelyFat,
    "B": codes.cid6001.ScatteredFibroglandularDensities,
    "C": codes.cid6001.HeterogeneouslyDense,
    "D": codes.cid6001.ExtremelyDense,
}
# Private: the model's suspicion is a lesion-present score learnt on phantoms, not a probability of cancer.
SUSPICION = Code("MG_SUSPICION", _SCHEME, "AI suspicion score (lesion present)")
SUSPICION_FLAG = Code("MG_FLAG", _SCHEME, "AI second-reader suggestion")
FLAG = Code("MG_FLAG_YES", _SCHEME, "Flag for attention")
NO_FLAG = Code("MG_FLAG_NO", _SCHEME, "No flag")
VIEW_ASSESSMENT = Code("MG_VIEW", _SCHEME, "AI screening assessment of a mammogram view")
SUSPICIOUS_REGION = Code("MG_REGION", _SCHEME, "AI suspicious region (Grad-CAM top region)")
LATERALITY_CODES = {"R": codes.SCT.Right, "L": codes.SCT.Left}
FLAG_TEXT, NO_FLAG_TEXT = "flag for attention", "no flag"
SC_SERIES_NUMBER = {"R": 9401, "L": 9402}
SR_SERIES_NUMBER = 9403
SR_NAME = "mammography_sr.dcm"
_BOX_LEVEL = 0.5  # the top region: the heat map above this share of its peak, connected to the peak


@dataclass
class ImageResult:
    """The network's reading of one view, and its heat map when flagged."""

    view: View
    prepared: MetaTensor  # the network input (C, H, W), remembering its pre-processing
    density_probabilities: np.ndarray
    suspicion: float | None
    flagged: bool = False
    heat: np.ndarray | None = None  # source grid, [0, 1]
    box_rc: tuple[int, int, int, int] | None = None  # (row0, col0, row1, col1), inclusive-exclusive
    peak_rc: tuple[int, int] | None = None


@dataclass
class BreastResult:
    laterality: str
    density_probabilities: np.ndarray  # mean over the breast's views
    suspicion: float | None  # max over the breast's views
    views: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OutputSpec:
    """How to read the network's output row (radinfer.json ``outputs``, ``density_classes``)."""

    density: slice
    suspicion: int | None
    classes: tuple[str, ...]

    @classmethod
    def from_radinfer(cls, radinfer: dict[str, Any], name: str) -> OutputSpec:
        outputs = radinfer.get("outputs", {"density_logits": [0, 4], "suspicion_logit": 4})
        try:
            start, stop = (int(v) for v in outputs["density_logits"])
            suspicion = outputs.get("suspicion_logit")
            suspicion = None if suspicion is None else int(suspicion)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"Bundle {name!r}: radinfer.json 'outputs' needs 'density_logits': [start, stop] "
                              f"and optionally 'suspicion_logit': index, got {outputs!r}.") from exc
        classes = tuple(str(c) for c in radinfer.get("density_classes", ["A", "B", "C", "D"]))
        if stop - start != len(classes) or start < 0:
            raise BundleError(f"Bundle {name!r}: radinfer.json 'density_logits' [{start}, {stop}] must span one "
                              f"logit per density class {list(classes)}.")
        return cls(slice(start, stop), suspicion, classes)


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    sensitivity: float | None
    specificity: float | None
    measured_on: str

    @classmethod
    def from_radinfer(cls, radinfer: dict[str, Any]) -> OperatingPoint | None:
        point = radinfer.get("operating_point")
        if not isinstance(point, dict) or not isinstance(point.get("threshold"), (int, float)):
            return None
        optional = {k: float(point[k]) if isinstance(point.get(k), (int, float)) else None
                    for k in ("sensitivity", "specificity")}
        return cls(float(point["threshold"]), **optional, measured_on=str(point.get("measured_on", "")))

    def describe(self) -> str:
        figures = ", ".join(f"{k} {v:.2f}" for k, v in (("sensitivity", self.sensitivity),
                                                        ("specificity", self.specificity)) if v is not None)
        where = f" on {self.measured_on}" if self.measured_on else ""
        return f"at threshold {self.threshold:.3f} the model card states {figures or 'no figures'}{where}"


class MammographyTask:
    name: ClassVar[str] = "mammography"

    def run(self, bundle: Bundle, study: Study, series: list[Series], ctx: TaskContext) -> TaskResult:
        if bundle.runner is None or bundle.network is None:
            raise BundleError(f"Bundle {bundle.name!r} is not loaded; call Engine.load_all() first.")
        spec = OutputSpec.from_radinfer(bundle.radinfer, bundle.name)
        point = OperatingPoint.from_radinfer(bundle.radinfer) if spec.suspicion is not None else None
        with ctx.stage("load", 0.2):
            selection = select_views(series, ctx.limits)
        if not selection.views:
            return TaskResult(status=ReportStatus.rejected, series_used=series,
                              reasons=selection.rejected or ["No image of the study is a mammogram view"])
        reasons = selection.reasons
        if spec.suspicion is not None and point is None:
            reasons.append(f"Bundle {bundle.name!r} states no operating_point threshold in radinfer.json: "
                           "suspicion probabilities are given but no flag")
        images = self._classify(bundle, selection.views, spec, ctx)
        breasts = aggregate(images)
        flagged = apply_operating_point(images, point)
        if flagged:
            with ctx.stage("attention_map", 0.8):
                reasons += self._heat_maps(bundle, flagged, spec)
        summary = study_summary(images, breasts, point, spec)
        status = ReportStatus.partial if reasons else ReportStatus.complete
        with ctx.stage("results", 1.0):
            artifacts = self._write_results(bundle, ctx, images, summary, point, spec)
        used = [s for s in series if any(v.series is s for v in selection.views)]
        return TaskResult(status=status, series_used=used, findings=findings(images, breasts, spec),
                          reasons=reasons, summary=summary, artifacts=artifacts)

    # -- model ---------------------------------------------------------------------------------------

    def _classify(self, bundle: Bundle, views: list[View], spec: OutputSpec,
                  ctx: TaskContext) -> list[ImageResult]:
        with ctx.stage("preprocess", 0.35), torch.no_grad():
            prepared = [preprocess(bundle, view) for view in views]
            batch = torch.stack([x.as_tensor() for x in prepared]).float().to(bundle.device)
        with ctx.stage("inference", 0.6), torch.no_grad():
            logits = bundle.runner(batch).float().cpu()  # one request: the study's views batch together
        density = torch.softmax(logits[:, spec.density], dim=1).numpy()
        suspicion = torch.sigmoid(logits[:, spec.suspicion]).numpy() if spec.suspicion is not None else None
        return [ImageResult(view, prepared[i], density[i], None if suspicion is None else float(suspicion[i]))
                for i, view in enumerate(views)]

    def _heat_maps(self, bundle: Bundle, flagged: list[ImageResult], spec: OutputSpec) -> list[str]:
        """Grad-CAM for the flagged images, on the source grid; why a map is unavailable, if it is."""
        layer = bundle.get("gradcam_layer")
        if not isinstance(layer, str):
            return ["Heat maps unavailable: configs/inference.json has no 'gradcam_layer' module name"]
        preprocessing = bundle.get("preprocessing")
        batch = torch.stack([r.prepared.as_tensor() for r in flagged]).float().to(bundle.device)
        try:
            heat = grad_cam(bundle.network, layer, batch, spec.suspicion)
            maps = [to_source_grid(one, r.prepared, preprocessing, r.view.image.array.shape)
                    for r, one in zip(flagged, heat, strict=True)]
        except (RuntimeError, AttributeError, ValueError, KeyError) as exc:
            return [f"Heat maps unavailable: {type(exc).__name__}: {exc}"[:240]]
        flat = []
        for result, cam in zip(flagged, maps, strict=True):
            if cam.max() > 0:
                result.heat = cam
                result.box_rc, result.peak_rc = top_region(cam, result.view.breast)
            else:
                flat.append(result.view.label)
        return [(f"Heat map unavailable for {', '.join(flat)}: the Grad-CAM map of layer {layer!r} is zero "
                "everywhere (no positive evidence for the suspicion score there)")] if flat else []

    # -- results -------------------------------------------------------------------------------------

    def _write_results(self, bundle: Bundle, ctx: TaskContext, images: list[ImageResult], summary: dict,
                       point: OperatingPoint | None, spec: OutputSpec) -> list[Artifact]:
        provenance = result_provenance(bundle)
        results = ResultSet.of(provenance, [r.view.instance.dataset for r in images])
        artifacts: list[Artifact] = []
        for number, result in enumerate((r for r in images if r.heat is not None), start=1):
            view = result.view
            stem = f"mammography_heatmap_{view.laterality}_{view.view}"
            lines = [f"{view.label}: suspicion {result.suspicion:.2f} >= {point.threshold:.2f}",
                     f"{FLAG_TEXT}; density {spec.classes[int(np.argmax(result.density_probabilities))]}",
                     "Grad-CAM; box: top region",
                     "AI second reader, research only"]
            if provenance.trained_on_synthetic_data:
                lines.append("Trained on synthetic phantoms")
            half = view.breast.shape[1] // 2  # text on the side away from the chest wall
            corner = "right" if view.breast[:, :half].sum() > view.breast[:, half:].sum() else "left"
            picture = heat_map_overlay(view.image.display, result.heat, lines, box_rc=result.box_rc,
                                       text_corner=corner)
            sc = secondary_capture(view.instance.dataset, picture,
                                   **results.placed(f"sc:{view.laterality}", f"sc:{view.label}"),
                                   series_number=SC_SERIES_NUMBER[view.laterality], instance_number=number,
                                   series_description=f"AI mammography heat maps {view.laterality}",
                                   description=f"AI mammography heat map {view.label}")
            artifacts += save_picture(ctx.workdir, stem, sc, picture, f"Grad-CAM heat map on {view.label}")
        sr = measurement_report(
            [r.view.instance.dataset for r in images], sr_groups(images, spec, point is not None),
            **results.placed("sr"), series_number=SR_SERIES_NUMBER,
            description="AI screening mammography report", procedure_code=codes.SCT.Mammography,
            qualitative_study_findings=sr_study_findings(summary, spec))
        sr.save_as(ctx.workdir / SR_NAME, enforce_file_format=True)
        artifacts.append(Artifact(SR_NAME, "application/dicom",
                                  "TID 1500 report: density and suspicion per view, flagged regions",
                                  str(sr.SOPClassUID), str(sr.SOPInstanceUID)))
        return artifacts


def preprocess(bundle: Bundle, view: View) -> MetaTensor:
    """The bundle's pre-processing of one view: a (C, H, W) MetaTensor that remembers its transforms."""
    data = {"image": MetaTensor(torch.from_numpy(np.ascontiguousarray(view.image.array))[None])}
    preprocessing = bundle.get("preprocessing")
    if preprocessing is not None:
        data = preprocessing(data)
    image = data["image"]
    image = image if isinstance(image, MetaTensor) else MetaTensor(torch.as_tensor(image))
    channels = int(bundle.radinfer.get("input_channels", bundle.input_channels()))
    if image.shape[0] == 1 and channels > 1:
        image = image.repeat(channels, *([1] * (image.dim() - 1)))
    return image


def aggregate(images: list[ImageResult]) -> list[BreastResult]:
    """Per breast (R, then L): the mean of its views' density probabilities and the maximum suspicion."""
    breasts = []
    for laterality in ("R", "L"):
        mine = [r for r in images if r.view.laterality == laterality]
        if not mine:
            continue
        suspicions = [r.suspicion for r in mine if r.suspicion is not None]
        breasts.append(BreastResult(laterality, np.mean([r.density_probabilities for r in mine], axis=0),
                                    max(suspicions) if suspicions else None, [r.view.view for r in mine]))
    return breasts


def apply_operating_point(images: list[ImageResult], point: OperatingPoint | None) -> list[ImageResult]:
    """Mark and return the images whose suspicion is at or above the operating threshold."""
    for result in images:
        result.flagged = point is not None and result.suspicion is not None and result.suspicion >= point.threshold
    return [r for r in images if r.flagged]


def study_summary(images: list[ImageResult], breasts: list[BreastResult], point: OperatingPoint | None,
                  spec: OutputSpec) -> dict[str, str | float | int | bool | None]:
    side = {"R": "right", "L": "left"}
    denser = max(breasts, key=lambda b: (int(np.argmax(b.density_probabilities)), b.laterality == "R"))
    summary: dict[str, str | float | int | bool | None] = {
        "views_analysed": ", ".join(r.view.label for r in images),
        "density": spec.classes[int(np.argmax(denser.density_probabilities))],
        "density_rule": "BI-RADS: the denser breast's category; a breast's class probabilities are the mean of "
                        "its views'",
        **{f"density_probability_{c}": round(float(p), 4) for c, p in zip(spec.classes, denser.density_probabilities)},
    }
    for breast in breasts:
        summary[f"density_{side[breast.laterality]}"] = spec.classes[int(np.argmax(breast.density_probabilities))]
        if breast.suspicion is not None:
            summary[f"suspicion_{side[breast.laterality]}"] = round(breast.suspicion, 4)
    if spec.suspicion is None:
        summary["result"] = None
        summary["suggestion"] = "Density only: this bundle gives no suspicion score, so no flag and no heat map."
        return summary
    worst = max(breasts, key=lambda b: (b.suspicion, b.laterality == "R"))
    summary.update({"most_suspicious_breast": worst.laterality, "suspicion_probability": round(worst.suspicion, 4),
                    "suspicion_rule": "a breast's suspicion is the maximum over its views"})
    if point is None:
        summary["result"] = None
        summary["suggestion"] = "No operating point in the bundle: suspicion scores only, no flag."
        return summary
    flagged = worst.suspicion >= point.threshold
    summary.update({
        "result": FLAG_TEXT if flagged else NO_FLAG_TEXT,
        "suggestion": (
            f"Second reader's suggestion: {FLAG_TEXT if flagged else NO_FLAG_TEXT}. The {side[worst.laterality]} "
            f"breast's suspicion {worst.suspicion:.3f} is {'at or above' if flagged else 'below'} the operating "
            f"threshold; {point.describe()}. Not a diagnosis."),
        "operating_threshold": point.threshold,
        "operating_sensitivity": point.sensitivity,
        "operating_specificity": point.specificity,
        "operating_point_measured_on": point.measured_on or None,
        "flagged_images": ", ".join(r.view.label for r in images if r.flagged) or None,
        "heat_maps": ", ".join(r.view.label for r in images if r.heat is not None) or None,
    })
    return summary


def to_source_grid(heat: torch.Tensor, prepared: MetaTensor, preprocessing: Any,
                   shape: tuple[int, int]) -> np.ndarray:
    """A (1, H, W) map on the network input grid back on the source pixel grid, by inverting the bundle's
    pre-processing (MONAI's invertible spatial transforms: resize, pad, crop, flip...)."""
    cam = MetaTensor(heat, meta=dict(prepared.meta), applied_operations=copy.deepcopy(prepared.applied_operations))
    if preprocessing is not None:
        cam = preprocessing.inverse({"image": cam})["image"]
    array = np.asarray(torch.as_tensor(cam).float())[0]
    if array.shape != tuple(shape):
        raise ValueError(f"the inverted heat map is {array.shape}, not the image's {tuple(shape)}: the bundle's "
                         "pre-processing is not invertible")
    array = np.clip(array, 0.0, 1.0)  # +-inf to 1 and 0, as nan_to_num then clip gives, at a third of the cost
    array[np.isnan(array)] = 0.0
    return array


def top_region(heat: np.ndarray, breast: np.ndarray) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """The bounding box (row0, col0, row1, col1) of the connected part of the heat map inside the breast at or
    above half its peak that holds the peak, and the peak (row, column)."""
    inside = np.where(breast, heat, 0.0) if breast.any() and heat[breast].max() > 0 else heat
    peak = np.unravel_index(int(np.argmax(inside)), inside.shape)
    labels, _ = ndimage.label(inside >= _BOX_LEVEL * inside[peak])
    rows, cols = ndimage.find_objects((labels == labels[peak]).astype(np.int32))[0]
    return (rows.start, cols.start, rows.stop, cols.stop), (int(peak[0]), int(peak[1]))


def _score(value: float) -> float:
    """A suspicion score as the findings JSON and the SR both give it (4 decimals: the same number in both)."""
    return round(float(value), 4)


def _density_code(category: str) -> Code:
    return DENSITY_CODES.get(category) or Code(f"MG_DENSITY_{category}"[:16], _SCHEME, f"Density category {category}")


def _source(view: View) -> SourceRef:
    return SourceRef(study_instance_uid=view.series.study_instance_uid,
                     series_instance_uid=view.series.series_instance_uid,
                     sop_instance_uid=view.instance.sop_instance_uid, sop_class_uid=view.instance.sop_class_uid)


def _finding_code(code: Code) -> FindingCode:
    return FindingCode(value=code.value, scheme=code.scheme_designator, meaning=code.meaning)


def findings(images: list[ImageResult], breasts: list[BreastResult], spec: OutputSpec) -> list[Finding]:
    """One finding per view, one per flagged region (with its box on the source grid), one per breast."""
    out = []

    def probabilities(values: np.ndarray) -> list[Measurement]:
        return [Measurement(name=f"density_probability_{c}", value=round(float(p), 4), unit="1")
                for c, p in zip(spec.classes, values)]

    def suspicion(value: float | None) -> list[Measurement]:
        return [] if value is None else [Measurement(name="suspicion_probability", value=_score(value), unit="1",
                                                     code=_finding_code(SUSPICION))]

    for r in images:
        view, density = r.view, spec.classes[int(np.argmax(r.density_probabilities))]
        out.append(Finding(
            label="mammogram_view", code=_finding_code(VIEW_ASSESSMENT), confidence=r.suspicion,
            measurements=suspicion(r.suspicion) + probabilities(r.density_probabilities),
            attributes={"laterality": view.laterality, "view": view.view, "density": density,
                        "flagged": r.flagged if spec.suspicion is not None else None},
            location=Location(source=_source(view), description=f"{view.label} view, whole image")))
        if r.box_rc is not None:
            r0, c0, r1, c1 = r.box_rc
            out.append(Finding(
                label="suspicious_region", code=_finding_code(SUSPICIOUS_REGION), confidence=r.suspicion,
                measurements=suspicion(r.suspicion),
                attributes={"laterality": view.laterality, "view": view.view, "method": "Grad-CAM",
                            "box_rule": f"heat map >= {_BOX_LEVEL} x its peak inside the breast, the part "
                                        "holding the peak"},
                location=Location(pixel_rc=r.peak_rc, bounding_box_rc=[[r0, c0], [r1, c1]], source=_source(view),
                                  description=f"{view.label}: top region of the heat map")))
    for b in breasts:
        code = codes.SCT.RightBreast if b.laterality == "R" else codes.SCT.LeftBreast
        out.append(Finding(
            label="breast", code=_finding_code(code), confidence=b.suspicion,
            measurements=suspicion(b.suspicion) + probabilities(b.density_probabilities),
            attributes={"laterality": b.laterality, "density": spec.classes[int(np.argmax(b.density_probabilities))],
                        "views": ", ".join(b.views)}))
    return out


def sr_groups(images: list[ImageResult], spec: OutputSpec, has_flag: bool) -> list[MeasurementGroupSpec]:
    """TID 1500 groups: one image-level group per view, one planar ROI group per flagged region."""
    groups = []
    for r in images:
        view, source = r.view, r.view.instance.dataset
        density = spec.classes[int(np.argmax(r.density_probabilities))]
        evaluations = [(BREAST_COMPOSITION, _density_code(density))]
        if has_flag:
            evaluations.append((SUSPICION_FLAG, FLAG if r.flagged else NO_FLAG))
        measured = [] if r.suspicion is None else [(SUSPICION, _score(r.suspicion), codes.UCUM.NoUnits)]
        site = {"finding_site": codes.SCT.Breast, "finding_site_laterality": LATERALITY_CODES[view.laterality]}
        groups.append(MeasurementGroupSpec(roi=WholeImage(source), tracking_id=f"{view.label} view",
                                           finding_type=VIEW_ASSESSMENT, measurements=measured,
                                           qualitative_evaluations=evaluations, **site))
        if r.box_rc is not None:
            r0, c0, r1, c1 = r.box_rc
            groups.append(MeasurementGroupSpec(roi=PlanarROI.rectangle(source, (r0, c0), (r1, c1)),
                                               tracking_id=f"{view.label} region", finding_type=SUSPICIOUS_REGION,
                                               measurements=measured, **site))
    return groups


def sr_study_findings(summary: dict, spec: OutputSpec) -> list[tuple[Code, Code]]:
    items = [(BREAST_COMPOSITION, _density_code(str(summary["density"])))]
    if summary.get("result") is not None:
        items.append((SUSPICION_FLAG, FLAG if summary["result"] == FLAG_TEXT else NO_FLAG))
    return items
