"""Pediatric bone age from a PA hand radiograph: estimate, Greulich & Pyle comparison, attention map, SR and SC.

One radiograph per study is assessed: the first routed image that passes the input checks (view, laterality,
readable pixels, plausible size and content). The bundle's network takes the pre-processed image and the sex
code as one (1, 2, H, W) tensor (see models/bone_age/scripts/net.py), so it runs through ``bundle.runner``
like any other model and profits from dynamic batching.

Status rules (never a silent number):

- rejected: no image passes the input checks (not a PA hand view, unreadable, implausible image);
- partial: a bone age is given but something limits it: PatientSex not M/F (the network runs with a
  neutral sex code and the sex-specific Greulich & Pyle comparison is omitted), chronological age unknown,
  chronological age outside the model's supported range, or the estimate at a limit of that range;
- complete: otherwise.

radinfer.json keys read here: ``supported_age_months`` {"M": [lo, hi], "F": [lo, hi]} (the bone-age range
the model was trained on). inference.json: ``gradcam_layer`` (a module name of the network for Grad-CAM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from monai.data import MetaTensor
from PIL import Image
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_io.errors import InputRejected
from dicom_io.image2d import load_image2d
from dicom_io.types import Image2D, InstanceHeader, Series, Study
from dicom_io.writers.identity import ResultSet
from dicom_io.writers.sc import heat_map_overlay, secondary_capture
from dicom_io.writers.sr import MeasurementGroupSpec, WholeImage, measurement_report
from inference.attention import grad_cam
from inference.bundle import Bundle
from inference.engine import result_provenance
from inference.errors import BundleError
from inference.findings import Code as FindingCode
from inference.findings import Finding, Location, Measurement, ReportStatus, SourceRef
from inference.tasks.base import Artifact, TaskContext, TaskResult, save_picture
from inference.tasks.bone_age_reference import (
    Z_CONVENTION_BRUSH,
    Z_CONVENTION_CA,
    BoneAgeAssessment,
    assess,
    chronological_age,
    years_months,
)

SEX_CODES = {"M": 1.0, "F": 0.0}
UNKNOWN_SEX_CODE = 0.5
_SCHEME = "99RADINFER"
BONE_AGE = Code("BONE_AGE", _SCHEME, "Bone age")
CHRONOLOGICAL_AGE = Code("CHRONO_AGE", _SCHEME, "Chronological age")
BRUSH_MEAN = Code("GP_BRUSH_MEAN", _SCHEME, "Greulich and Pyle Brush Foundation mean bone age")
BRUSH_SD = Code("GP_BRUSH_SD", _SCHEME, "Greulich and Pyle Brush Foundation bone age SD")
Z_CA = Code("BA_Z_CA", _SCHEME, "Bone age Z-score (BA - CA) / SD")
Z_BRUSH = Code("BA_Z_BRUSH", _SCHEME, "Bone age Z-score (BA - Brush mean) / SD")
CATEGORY = Code("BA_CATEGORY", _SCHEME, "Bone age category")
CATEGORY_VALUES = {
    "delayed": Code("BA_DELAYED", _SCHEME, "Delayed bone age"),
    "normal": Code("BA_NORMAL", _SCHEME, "Bone age within 2 SD of chronological age"),
    "advanced": Code("BA_ADVANCED", _SCHEME, "Advanced bone age"),
    "indeterminate": Code("BA_INDETERMINATE", _SCHEME, "Bone age category indeterminate"),
}
SKELETAL_MATURITY = Code("SKELETAL_MATURITY", _SCHEME, "Skeletal maturity assessment")
SC_SERIES_NUMBER = 9301
SR_SERIES_NUMBER = 9302
OVERLAY_STEM, SR_NAME = "bone_age_overlay", "bone_age_sr.dcm"

_LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLO", "RLO", "OBL", "OBLIQUE", "XCL", "XCLM"})
_MIN_SIDE_PX = 128
_MAX_ASPECT = 3.0
_FOV_MM = (50.0, 500.0)  # a child's hand-and-wrist field of view, longest side


@dataclass
class _Estimate:
    instance: InstanceHeader
    image: Image2D
    bone_age_months: float
    cam: np.ndarray | None  # attention map on the source grid, [0, 1]
    cam_error: str | None


class BoneAgeTask:
    name: ClassVar[str] = "bone_age"

    def run(self, bundle: Bundle, study: Study, series: list[Series], ctx: TaskContext) -> TaskResult:
        if bundle.runner is None or bundle.network is None:
            raise BundleError(f"Bundle {bundle.name!r} is not loaded; call Engine.load_all() first.")
        rejections: list[str] = []
        chosen: tuple[Series, InstanceHeader, Image2D] | None = None
        with ctx.stage("load", 0.2):
            for s in series:
                for instance in s.instances:
                    image, why = _checked_image(instance, ctx)
                    if image is None:
                        rejections.append(why)
                        continue
                    chosen = (s, instance, image)
                    break
                if chosen:
                    break
        if chosen is None:
            return TaskResult(status=ReportStatus.rejected, series_used=series, reasons=rejections)
        used_series, instance, image = chosen
        header = instance.dataset
        reasons: list[str] = []
        sex = str(header.get("PatientSex", "") or "").strip().upper()
        if sex not in SEX_CODES:
            reasons.append(
                f"PatientSex (0010,0040) is {sex or 'empty'}, not M or F: the network ran with a neutral sex "
                "code and the sex-specific Greulich & Pyle comparison is omitted; send PatientSex M or F")
            sex = None
        age = chronological_age(header)
        if age.months is None:
            reasons.append(f"Chronological age unknown: {age.reason}")
        estimate = self._estimate(bundle, instance, image, sex, ctx)
        low, high = _supported_range(bundle, sex)
        bone_age = estimate.bone_age_months
        if age.months is not None and not low <= age.months <= high:
            reasons.append(f"Chronological age {age.months:.1f} months is outside the model's supported range "
                           f"{low:.0f}-{high:.0f} months; the bone age estimate is unreliable there")
        if not low <= bone_age <= high:
            clipped = float(np.clip(bone_age, low, high))
            reasons.append(f"The network's estimate {bone_age:.1f} months lies outside its trained range "
                           f"{low:.0f}-{high:.0f} months and was limited to {clipped:.1f} months")
            bone_age = clipped
        assessment = assess(sex, age.months, bone_age)
        if assessment.reason and age.months is not None and sex is not None:
            reasons.append(f"Category indeterminate: {assessment.reason}")
        status = ReportStatus.partial if reasons else ReportStatus.complete
        summary = _summary(sex, age.months, age.source, bone_age, assessment)
        summary["attention_map"] = "Grad-CAM" if estimate.cam is not None else f"unavailable: {estimate.cam_error}"
        summary["images_not_used"] = "; ".join(rejections) or None
        finding = _finding(used_series, instance, image, summary, bone_age, age.months, assessment)
        with ctx.stage("results", 1.0):
            artifacts = self._write_results(bundle, ctx, estimate, summary, assessment, status)
        return TaskResult(status=status, series_used=[used_series], findings=[finding],
                          reasons=reasons, summary=summary, artifacts=artifacts)

    # -- model ---------------------------------------------------------------------------------------

    def _estimate(self, bundle: Bundle, instance: InstanceHeader, image: Image2D, sex: str | None,
                  ctx: TaskContext) -> _Estimate:
        preprocessing = bundle.get("preprocessing")
        with ctx.stage("preprocess", 0.35), torch.no_grad():
            data = {"image": MetaTensor(torch.from_numpy(np.ascontiguousarray(image.array))[None])}
            if preprocessing is not None:
                data = preprocessing(data)
            pixels = torch.as_tensor(data["image"]).float()[None]
            code = torch.tensor([SEX_CODES.get(sex or "", UNKNOWN_SEX_CODE)])
            x = torch.cat([pixels, code.reshape(1, 1, 1, 1).expand_as(pixels)], dim=1).to(bundle.device)
        with ctx.stage("inference", 0.6), torch.no_grad():
            bone_age = float(bundle.runner(x).reshape(-1)[0])
        cam, cam_error = None, None
        with ctx.stage("attention_map", 0.8):
            layer = bundle.get("gradcam_layer")
            try:
                if not isinstance(layer, str):
                    raise BundleError("configs/inference.json has no 'gradcam_layer' module name")
                heat = grad_cam(bundle.network, layer, x, class_idx=0)
                cam = _to_source_grid(heat[0, 0].numpy(), image.array.shape)
            except (BundleError, RuntimeError, AttributeError, ValueError) as exc:
                cam_error = f"{type(exc).__name__}: {exc}"[:200]
        return _Estimate(instance, image, bone_age, cam, cam_error)

    # -- results -------------------------------------------------------------------------------------

    def _write_results(self, bundle: Bundle, ctx: TaskContext, estimate: _Estimate, summary: dict,
                       assessment: BoneAgeAssessment, status: ReportStatus) -> list[Artifact]:
        source = estimate.instance.dataset
        results = ResultSet.of(result_provenance(bundle), [source])
        overlay = heat_map_overlay(estimate.image.display, estimate.cam, _overlay_text(summary, status))
        sc = secondary_capture(source, overlay, **results.placed("sc", "sc:1"), series_number=SC_SERIES_NUMBER,
                               description="AI bone age attention map")
        pictures = save_picture(ctx.workdir, OVERLAY_STEM, sc, overlay, "Grad-CAM attention map and result text")
        # the findings' own (rounded) numbers, so that the SR and the JSON give the same values
        measurements = [(BONE_AGE, summary["bone_age_months"], codes.UCUM.Month)]
        if summary["chronological_age_months"] is not None:
            measurements.append((CHRONOLOGICAL_AGE, summary["chronological_age_months"], codes.UCUM.Month))
        if assessment.reference is not None:
            measurements += [
                (BRUSH_MEAN, summary["brush_mean_months"], codes.UCUM.Month),
                (BRUSH_SD, summary["brush_sd_months"], codes.UCUM.Month),
                (Z_CA, summary["z_vs_chronological_age"], codes.UCUM.NoUnits),
                (Z_BRUSH, summary["z_vs_brush_mean"], codes.UCUM.NoUnits),
            ]
        group = MeasurementGroupSpec(
            roi=WholeImage(source), tracking_id="bone age", finding_type=SKELETAL_MATURITY,
            measurements=measurements,
            qualitative_evaluations=[(CATEGORY, CATEGORY_VALUES[assessment.category])],
            finding_site=codes.SCT.BoneStructureOfHand,
        )
        sr = measurement_report([source], [group], **results.placed("sr"), series_number=SR_SERIES_NUMBER,
                                description="AI bone age report")
        sr.save_as(ctx.workdir / SR_NAME, enforce_file_format=True)
        return [
            *pictures,
            Artifact(SR_NAME, "application/dicom", "TID 1500 measurement report with the bone age",
                     str(sr.SOPClassUID), str(sr.SOPInstanceUID)),
        ]


def _checked_image(instance: InstanceHeader, ctx: TaskContext) -> tuple[Image2D | None, str]:
    """The decoded image when ``instance`` looks like a PA hand radiograph, else None and why not."""
    ds, where = instance.dataset, f"Image {instance.sop_instance_uid}"
    body_part = str(ds.get("BodyPartExamined", "") or "").upper()
    if body_part != "HAND":
        return None, (f"{where}: BodyPartExamined (0018,0015) is {body_part or 'empty'}, not HAND; bone age needs "
                      "a PA hand radiograph")
    view = str(ds.get("ViewPosition", "") or "").upper()
    if view in _LATERAL_VIEWS:
        return None, f"{where}: ViewPosition (0018,5101) is {view}; bone age needs a PA (or AP) hand view"
    laterality = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").upper()
    if laterality == "B":
        return None, (f"{where}: ImageLaterality (0020,0062) is B (both hands); send one hand per image, "
                      "preferably the left")
    try:
        image = load_image2d(instance, ctx.limits)
    except InputRejected as exc:
        return None, f"{where}: the image could not be read ({exc})"
    rows, cols = image.array.shape
    if min(rows, cols) < _MIN_SIDE_PX or max(rows, cols) / min(rows, cols) > _MAX_ASPECT:
        return None, (f"{where}: {rows}x{cols} pixels is not a plausible hand radiograph (at least "
                      f"{_MIN_SIDE_PX} pixels a side, aspect ratio at most {_MAX_ASPECT:.0f}:1)")
    if image.pixel_spacing is not None:
        fov = max(rows * image.pixel_spacing[0], cols * image.pixel_spacing[1])
        if not _FOV_MM[0] <= fov <= _FOV_MM[1]:
            return None, (f"{where}: the field of view is {fov:.0f} mm; a hand radiograph spans "
                          f"{_FOV_MM[0]:.0f}-{_FOV_MM[1]:.0f} mm (check PixelSpacing or the body part)")
    low, high = np.percentile(image.array, (1, 99))
    if not np.isfinite(image.array).all() or high - low <= 0:
        return None, f"{where}: the pixel data is blank or constant, there is no radiograph to read"
    return image, ""


def _supported_range(bundle: Bundle, sex: str | None) -> tuple[float, float]:
    ranges = bundle.radinfer.get("supported_age_months", {})
    if sex in ranges:
        return float(ranges[sex][0]), float(ranges[sex][1])
    # Unknown sex: the range both sexes were trained on.
    bounds = [tuple(map(float, v)) for v in ranges.values()] or [(0.0, 216.0)]
    return max(b[0] for b in bounds), min(b[1] for b in bounds)


def _to_source_grid(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Undo the preprocessing's longest-side resize and symmetric padding for a (S, S) map."""
    size = heat.shape[0]
    scale = size / max(shape)
    h, w = (round(s * scale) for s in shape)
    top, left = (size - h) // 2, (size - w) // 2
    crop = heat[top:top + h, left:left + w]
    resized = Image.fromarray(crop.astype(np.float32), mode="F").resize((shape[1], shape[0]), Image.BILINEAR)
    return np.clip(np.nan_to_num(np.asarray(resized)), 0.0, 1.0)


def _overlay_text(summary: dict, status: ReportStatus) -> list[str]:
    lines = [f"Bone age: {summary['bone_age']} ({summary['bone_age_months']:.1f} months)",
             f"Sex: {summary['sex']}   Chronological age: " + (
                 f"{summary['chronological_age']} ({summary['chronological_age_months']:.1f} months)"
                 if summary["chronological_age_months"] is not None else "unknown")]
    if summary["brush_mean_months"] is not None:
        lines += [f"G&P Brush mean {summary['brush_mean_months']:.1f} mo, SD {summary['brush_sd_months']:.2f} mo",
                  (f"Z (BA-CA)/SD = {summary['z_vs_chronological_age']:+.2f}; "
                   f"Z (BA-mean)/SD = {summary['z_vs_brush_mean']:+.2f}")]
    lines.append(f"Category: {summary['category']}   Status: {status.value}")
    lines.append("AI estimate, research use only; model trained on synthetic phantoms")
    return lines


def _summary(sex: str | None, ca: float | None, ca_source: str, bone_age: float,
             assessment: BoneAgeAssessment) -> dict[str, str | float | int | bool | None]:
    reference = assessment.reference
    return {
        "sex": sex or "unknown",
        "chronological_age_months": None if ca is None else round(ca, 2),
        "chronological_age": None if ca is None else years_months(ca),
        "chronological_age_source": ca_source,
        "bone_age_months": round(bone_age, 2),
        "bone_age": years_months(bone_age),
        "brush_mean_months": None if reference is None else round(reference.mean_months, 2),
        "brush_sd_months": None if reference is None else round(reference.sd_months, 2),
        "z_vs_chronological_age": None if reference is None else round(assessment.z_vs_chronological_age, 2),
        "z_vs_chronological_age_convention": Z_CONVENTION_CA,
        "z_vs_brush_mean": None if reference is None else round(assessment.z_vs_brush_mean, 2),
        "z_vs_brush_mean_convention": Z_CONVENTION_BRUSH,
        "category": assessment.category,
        "category_rule": "delayed below -2, advanced above +2 of Z (BA - CA) / SD; indeterminate outside the "
                         "Greulich & Pyle table or without sex/chronological age",
        "reference": "Greulich & Pyle atlas, Brush Foundation means and SDs, linear interpolation",
    }


def _finding(series: Series, instance: InstanceHeader, image: Image2D, summary: dict, bone_age: float,
             ca: float | None, assessment: BoneAgeAssessment) -> Finding:
    measurements = [Measurement(name="bone_age", value=round(bone_age, 2), unit="mo",
                                code=FindingCode(value=BONE_AGE.value, scheme=_SCHEME, meaning=BONE_AGE.meaning))]
    if ca is not None:
        measurements.append(Measurement(name="chronological_age", value=round(ca, 2), unit="mo"))
    if assessment.reference is not None:
        measurements += [
            Measurement(name="brush_mean_bone_age", value=round(assessment.reference.mean_months, 2), unit="mo"),
            Measurement(name="brush_sd", value=round(assessment.reference.sd_months, 2), unit="mo"),
            Measurement(name="z_vs_chronological_age", value=round(assessment.z_vs_chronological_age, 2), unit="1"),
            Measurement(name="z_vs_brush_mean", value=round(assessment.z_vs_brush_mean, 2), unit="1"),
        ]
    attributes = {key: summary[key] for key in ("sex", "bone_age", "chronological_age", "category",
                                                "z_vs_chronological_age_convention", "z_vs_brush_mean_convention")}
    attributes["laterality"] = str(image.header.get("ImageLaterality", "") or image.header.get("Laterality", "")
                                   or "unknown")
    return Finding(
        label="bone_age",
        code=FindingCode(value=SKELETAL_MATURITY.value, scheme=_SCHEME, meaning=SKELETAL_MATURITY.meaning),
        measurements=measurements,
        attributes=attributes,
        location=Location(source=SourceRef(study_instance_uid=series.study_instance_uid,
                                           series_instance_uid=series.series_instance_uid,
                                           sop_instance_uid=instance.sop_instance_uid,
                                           sop_class_uid=instance.sop_class_uid),
                          description="whole image (hand and wrist)"),
    )
