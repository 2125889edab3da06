"""Evaluate the bundle on held-out phantoms through radinfer's own path (DICOM files -> pipeline.analyze).

Run from the repository root::

    .venv/bin/python -m models.lung_nodule.scripts.evaluate --cases 12 --seed 900

Held-out phantoms use seeds from ``--seed`` (training uses 1,000,000 and up), random slice thickness
0.6 to 2.5 mm and pixel spacing 0.6 to 0.9 mm, so every case is resampled by the bundle and inverted back.
Reports per-nodule sensitivity (LUNA16 hit: finding centroid within the nodule radius), false positives per
scan, scan-level Dice of the nodule mask, type agreement and diameter error of detected nodules, and the
inference time per phantom; writes them as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from dicom_io.limits import Limits
from dicom_io.synthetic import write_ct_series
from inference.engine import Engine
from inference.evaluation.metrics import Nodule, match_candidates
from inference.findings import Finding
from inference.pipeline import analyze
from inference.registry import Registry
from models.lung_nodule.scripts.phantom import generate_phantom

BUNDLE = Path(__file__).resolve().parents[1]
log = logging.getLogger("evaluate")


def held_out_phantom(seed: int):
    rng = np.random.default_rng(seed)
    thickness = float(rng.uniform(0.6, 2.5))
    pixel = float(rng.uniform(0.6, 0.9))
    slices = int(np.clip(round(100.0 / thickness), 40, 160))
    return generate_phantom(seed, shape=(slices, 320, 320), spacing=(thickness, pixel, pixel))


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def evaluate(cases: int, seed: int, work: Path, bundle: Path = BUNDLE) -> dict:
    (work / "models").mkdir(parents=True)
    (work / "models" / BUNDLE.name).symlink_to(bundle.resolve())
    engine = Engine(Registry([work / "models"]), "auto")
    engine.load_all()
    per_case, nodules_out = [], []
    for n in range(cases):
        phantom = held_out_phantom(seed + n)
        series_dir = work / f"case{n}" / "dicom"
        write_ct_series(phantom.hu, series_dir, spacing=phantom.spacing, origin=phantom.origin)
        job = work / f"case{n}" / "job"
        report = analyze([series_dir], engine, model=BUNDLE.name, limits=Limits(), workdir=job)
        truths = [Nodule(t.center_lps, t.diameter_mm) for t in phantom.nodules]
        candidates = [(f.location.patient_lps_mm, f.confidence or 1.0) for f in report.findings]
        match = match_candidates(candidates, truths)
        with np.load(job / "mask.npz") as data:
            labels, spacing = data["mask"], tuple(float(s) for s in data["spacing"])
        predicted = labels > 0
        boxes = ndimage.find_objects(labels)
        shape = {f.segment_number: round(compactness(labels[boxes[f.segment_number - 1]] == f.segment_number, spacing),
                                         3) for f in report.findings}
        for t in phantom.nodules:
            distances = [np.linalg.norm(np.subtract(f.location.patient_lps_mm, t.center_lps)) for f in report.findings]
            hit = bool(distances) and bool(min(distances) <= t.diameter_mm / 2)
            row = {"case": n, "type": t.type, "diameter_mm": round(t.diameter_mm, 2), "attachment": t.attachment,
                   "detected": hit}
            if hit:
                f = report.findings[int(np.argmin(distances))]
                values = {m.name: m.value for m in f.measurements}
                row |= {"confidence": round(f.confidence or 1.0, 4), "found_type": f.attributes["type"], "mean_diameter_mm": values["mean_diameter"],
                        "compactness": shape[f.segment_number],
                        "volume_diameter_mm": round(float(np.cbrt(6 * values["volume"] / np.pi)), 2),
                        "distance_mm": round(float(min(distances)), 2)}
            nodules_out.append(row)
        per_case.append({
            "case": n, "spacing": [round(s, 3) for s in phantom.spacing], "shape": list(phantom.hu.shape),
            "nodules": len(truths), "findings": len(report.findings), "false_positives": len(match.fp_scores),
            "false_positive_confidences": [round(float(v), 4) for v in match.fp_scores],
            "false_positive_findings": [finding_row(f) | {"compactness": shape[f.segment_number]}
                                        for f in report.findings if not any(
                np.linalg.norm(np.subtract(f.location.patient_lps_mm, t.center_lps)) <= t.diameter_mm / 2
                for t in phantom.nodules)],
            "dice": dice(predicted, phantom.labels > 0), "task_s": report.timings_s.get("task_total"),
        })
        log.info("case %d: %s", n, per_case[-1])
    return {"cases": cases, "seed": seed, "device": str(engine.device), "torch_threads": torch.get_num_threads(),
            **summarise(per_case, nodules_out)}


def compactness(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Radius of the largest ball inside ``mask`` over the radius of a ball of its volume (mm; 0 when empty):
    near 0.9 for a round nodule on these grids, lower for a piece of vessel (thinner than a ball of its volume)
    and for a nodule cut at the pleura. Recorded per finding to study a shape rule; the task has none."""
    volume_mm3 = float(np.count_nonzero(mask)) * float(np.prod(spacing))
    if volume_mm3 == 0:
        return 0.0
    inscribed = float(ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing).max())
    return inscribed / float(np.cbrt(3 * volume_mm3 / (4 * np.pi)))


def finding_row(finding: Finding) -> dict:
    """Confidence, mean diameter, type and centroid (LPS mm) of one finding (to choose confidence rules from a
    run at a low one, and to look up what a false positive lies on)."""
    values = {m.name: m.value for m in finding.measurements}
    return {"confidence": round(finding.confidence or 1.0, 4), "mean_diameter_mm": values["mean_diameter"],
            "found_type": finding.attributes["type"],
            "lps_mm": [round(float(v), 1) for v in finding.location.patient_lps_mm]}


SIZE_BINS_MM = ((3, 6), (6, 10), (10, 20), (20, 30.01))


def summarise(per_case: list[dict], nodules_out: list[dict]) -> dict:
    """Detection and measurement figures from the per-case and per-nodule rows (also for a saved JSON)."""
    cases = len(per_case)
    detected = [r for r in nodules_out if r["detected"]]
    clear = [r for r in nodules_out if r["diameter_mm"] >= 6]
    dices = [c["dice"] for c in per_case if c["dice"] is not None]

    def diameter_error(rows: list[dict]) -> float | None:
        rows = [r for r in rows if r["detected"]]
        return round(statistics.fmean(abs(r["volume_diameter_mm"] - r["diameter_mm"]) for r in rows), 2) \
            if rows else None

    return {
        "nodules": len(nodules_out),
        "sensitivity": len(detected) / max(len(nodules_out), 1),
        "sensitivity_6mm_or_more": sum(r["detected"] for r in clear) / max(len(clear), 1),
        "sensitivity_by_type": {
            kind: sum(r["detected"] for r in rows) / len(rows)
            for kind in ("solid", "part-solid", "ground-glass")
            if (rows := [r for r in nodules_out if r["type"] == kind])
        },
        "false_positives_per_scan": sum(c["false_positives"] for c in per_case) / cases,
        "dice_mean": statistics.fmean(dices) if dices else None,
        "detected_by_size_mm": {
            f"{lo}-{round(hi)}": f"{sum(r['detected'] for r in rows)}/{len(rows)}"
            for lo, hi in SIZE_BINS_MM if (rows := [r for r in nodules_out if lo <= r["diameter_mm"] < hi])
        },
        "detected_by_type": {
            kind: f"{sum(r['detected'] for r in rows)}/{len(rows)}"
            for kind in ("solid", "part-solid", "ground-glass")
            if (rows := [r for r in nodules_out if r["type"] == kind])
        },
        "mean_abs_error_volume_diameter_mm_by_attachment": {
            place: diameter_error([r for r in nodules_out if r["attachment"] == place])
            for place in ("none", "pleura", "vessel")
        },
        "type_agreement_detected": sum(r["found_type"] == r["type"] for r in detected) / max(len(detected), 1),
        "mean_abs_error_volume_diameter_mm": statistics.fmean(
            abs(r["volume_diameter_mm"] - r["diameter_mm"]) for r in detected) if detected else None,
        "task_seconds_mean": statistics.fmean(c["task_s"] for c in per_case),
        "task_seconds_max": max(c["task_s"] for c in per_case),
        "per_case": per_case,
        "per_nodule": nodules_out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--seed", type=int, default=900)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=BUNDLE / "docs" / "evaluation.json")
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help="a copy of the bundle (candidate weights)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lung-eval-") as work:
        result = evaluate(args.cases, args.seed, Path(work), args.bundle)
    args.out.write_text(json.dumps(result, indent=1))
    summary = {k: v for k, v in result.items() if k not in ("per_case", "per_nodule")}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
