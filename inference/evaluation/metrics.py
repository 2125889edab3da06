"""Evaluation metrics by task type, computed with monai.metrics, scikit-learn and scipy.

Conventions: every function takes plain arrays (no reports) and returns JSON-ready dicts of floats; an
undefined value (e.g. AUC with one class, HD95 of an empty mask) is ``None``, never NaN, so it survives JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric
from scipy import stats
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, cohen_kappa_score, confusion_matrix, roc_curve

# LUNA16: sensitivity at these false positives per scan; CPM is their mean.
LUNA16_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
LATENCY_PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)


def finite(value: float | None) -> float | None:
    """``value`` as a float, or None when it is missing, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --- bootstrap --------------------------------------------------------------------------------------


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float | None],
    n: int,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` cases resampled with replacement.

    Resamples where the statistic is undefined (None, e.g. AUC of a one-class resample) are dropped; with
    fewer than half of them defined the interval is (None, None). Same ``seed``, same interval.
    """
    if n < 2:
        return None, None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        value = finite(statistic(rng.integers(0, n, n)))
        if value is not None:
            values.append(value)
    if len(values) < n_resamples / 2:
        return None, None
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


# --- segmentation -----------------------------------------------------------------------------------


def segmentation_case_metrics(
    prediction: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    labels: Sequence[int],
    *,
    surface_tolerance_mm: float = 2.0,
) -> dict[str, dict[str, float | None]]:
    """Dice, HD95 (mm) and surface Dice at ``surface_tolerance_mm`` for each label value in ``labels``.

    ``prediction`` and ``truth`` are integer label maps on the same grid; ``spacing`` is per array axis (mm).
    A label absent from both maps scores Dice 1, HD95 0 and surface Dice 1 (nothing to find, nothing found);
    absent from only one, Dice 0, surface Dice 0 and HD95 None (no surface to measure from).
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from label shape {truth.shape}")
    out: dict[str, dict[str, float | None]] = {"dice": {}, "hd95": {}, "surface_dice": {}}
    spacing = [float(s) for s in spacing]
    for label in labels:
        pred, true = prediction == label, truth == label
        key = str(int(label))
        if not pred.any() or not true.any():
            both_empty = not pred.any() and not true.any()
            out["dice"][key] = 1.0 if both_empty else 0.0
            out["hd95"][key] = 0.0 if both_empty else None
            out["surface_dice"][key] = 1.0 if both_empty else 0.0
            continue
        y_pred, y = _one_hot(pred), _one_hot(true)
        out["dice"][key] = finite(DiceMetric(include_background=False)(y_pred, y).item())
        out["hd95"][key] = finite(
            HausdorffDistanceMetric(include_background=False, percentile=95)(
                y_pred, y, spacing=spacing
            ).item()
        )
        out["surface_dice"][key] = finite(
            SurfaceDiceMetric([surface_tolerance_mm], include_background=False)(
                y_pred, y, spacing=spacing
            ).item()
        )
    return out


def _one_hot(mask: np.ndarray) -> torch.Tensor:
    """(1, 2, *spatial) background/foreground one-hot tensor, as monai.metrics expects."""
    fg = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    return torch.stack([1.0 - fg, fg])[None]


def summarize(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean, SD, median, quartiles and count of the defined values (None ones counted as ``undefined``)."""
    defined = np.asarray([v for v in values if v is not None], dtype=float)
    if defined.size == 0:
        return {
            "n": 0,
            "undefined": len(values),
            "mean": None,
            "sd": None,
            "median": None,
            "q1": None,
            "q3": None,
        }
    return {
        "n": int(defined.size),
        "undefined": len(values) - int(defined.size),
        "mean": float(defined.mean()),
        "sd": float(defined.std(ddof=1)) if defined.size > 1 else None,
        "median": float(np.median(defined)),
        "q1": float(np.quantile(defined, 0.25)),
        "q3": float(np.quantile(defined, 0.75)),
    }


# --- detection (LUNA16) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Nodule:
    """A ground-truth target: centre and diameter, in LPS mm for volumes (3 values) or in pixels (row,
    column) for 2D images; ``exclude`` marks an irrelevant finding (LUNA16: candidates hitting it count
    neither as hit nor as false positive)."""

    center: tuple[float, ...]
    diameter_mm: float
    exclude: bool = False


@dataclass(frozen=True)
class CaseMatch:
    """One scan's candidates matched to its nodules."""

    tp_scores: list[float | None]  # per relevant nodule: best score of a candidate hitting it, None if missed
    fp_scores: list[float]  # candidates hitting no nodule


def match_candidates(
    candidates: Sequence[tuple[tuple[float, ...], float]], nodules: Sequence[Nodule]
) -> CaseMatch:
    """LUNA16 matching: a candidate hits a nodule when its centre lies within the nodule's radius.

    A candidate hitting several nodules is assigned to the nearest. A nodule hit several times counts once,
    with the highest score; the other hits are not false positives. Hits on excluded nodules are ignored.
    """
    if not nodules:  # a scan without nodules (a negative scan): every candidate is a false positive
        return CaseMatch(tp_scores=[], fp_scores=[float(score) for _, score in candidates])
    best: list[float | None] = [None] * len(nodules)
    fp: list[float] = []
    centers = np.asarray([n.center for n in nodules], dtype=float)
    radii = np.asarray([n.diameter_mm / 2.0 for n in nodules], dtype=float)
    for position, score in candidates:
        distance = np.linalg.norm(centers - np.asarray(position, dtype=float), axis=1)
        hits = np.flatnonzero(distance <= radii)
        if hits.size == 0:
            fp.append(float(score))
            continue
        nearest = int(hits[np.argmin(distance[hits])])
        if not nodules[nearest].exclude:
            best[nearest] = float(score) if best[nearest] is None else max(best[nearest], float(score))
    relevant = [b for b, n in zip(best, nodules, strict=True) if not n.exclude]
    return CaseMatch(tp_scores=relevant, fp_scores=fp)


def froc(matches: Sequence[CaseMatch], fp_rates: Sequence[float] = LUNA16_FP_RATES) -> dict[str, object]:
    """FROC curve, sensitivity at ``fp_rates`` false positives per scan and CPM (their mean), as LUNA16.

    The curve has one point per distinct candidate score (threshold >= score), from the strictest
    threshold (0 FP, 0 sensitivity) to accepting every candidate; sensitivities at the requested rates are
    linearly interpolated on it (``numpy.interp``, as the LUNA16 evaluation script), and a rate beyond the
    last point takes the final sensitivity.
    """
    n_scans = len(matches)
    tp = np.asarray([s for m in matches for s in m.tp_scores if s is not None], dtype=float)
    fp = np.asarray([s for m in matches for s in m.fp_scores], dtype=float)
    n_nodules = sum(len(m.tp_scores) for m in matches)
    result: dict[str, object] = {
        "scans": n_scans,
        "nodules": n_nodules,
        "detected_nodules": int(tp.size),
        "false_positives": int(fp.size),
    }
    if n_scans == 0 or n_nodules == 0:
        result.update(fps_per_scan=[], sensitivity=[], sensitivity_at={}, cpm=None)
        return result
    thresholds = np.unique(np.concatenate([tp, fp]))[::-1]
    fps = np.asarray([0.0] + [(fp >= t).sum() / n_scans for t in thresholds])
    sens = np.asarray([0.0] + [(tp >= t).sum() / n_nodules for t in thresholds])
    at = {_rate_key(rate): float(np.interp(rate, fps, sens)) for rate in fp_rates}
    result.update(
        fps_per_scan=fps.tolist(),
        sensitivity=sens.tolist(),
        sensitivity_at=at,
        cpm=float(np.mean(list(at.values()))),
    )
    return result


def _rate_key(rate: float) -> str:
    return f"{rate:g}"


# --- classification ---------------------------------------------------------------------------------


def auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney statistic from mid-ranks (ties count one half), or None with one class.

    Equal to ``sklearn.metrics.roc_auc_score`` and about 50x faster, which matters inside the bootstrap.
    """
    y = np.asarray(y_true, dtype=bool)
    m = int(y.sum())
    n = y.size - m
    if m == 0 or n == 0:
        return None
    ranks = stats.rankdata(scores)
    return float((ranks[y].sum() - m * (m + 1) / 2.0) / (m * n))


def classification_metrics(
    y_true: Sequence[int],
    scores: Sequence[float],
    *,
    threshold: float = 0.5,
    n_resamples: int = 2000,
    seed: int = 0,
    calibration_bins: int = 10,
) -> dict[str, object]:
    """Binary classification: AUC with a percentile-bootstrap 95% CI, ROC curve, sensitivity and
    specificity at ``threshold`` (positive when score >= threshold), confusion matrix, calibration, Brier."""
    y = np.asarray(y_true, dtype=int)
    s = np.asarray(scores, dtype=float)
    if y.size == 0:  # every case failed: the report still has to be written, with nothing to score
        return _empty_classification(threshold)
    point = auc(y, s)
    low, high = bootstrap_ci(lambda idx: auc(y[idx], s[idx]), y.size, n_resamples=n_resamples, seed=seed)
    predicted = (s >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    out: dict[str, object] = {
        "n": int(y.size),
        "positives": int(y.sum()),
        "negatives": int(y.size - y.sum()),
        "auc": point,
        "auc_ci95": [low, high],
        "threshold": threshold,
        "sensitivity": finite(tp / (tp + fn)) if tp + fn else None,
        "specificity": finite(tn / (tn + fp)) if tn + fp else None,
        "ppv": finite(tp / (tp + fp)) if tp + fp else None,
        "npv": finite(tn / (tn + fn)) if tn + fn else None,
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "roc": {"fpr": [], "tpr": [], "thresholds": []},
        "calibration": {"mean_predicted": [], "fraction_positive": []},
        "brier": None,
    }
    if point is not None:
        fpr, tpr, thr = roc_curve(y, s)
        out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": [finite(t) for t in thr]}
    if s.size and s.min() >= 0.0 and s.max() <= 1.0:
        out["brier"] = float(brier_score_loss(y, s, pos_label=1))  # defined with one class present too
        if np.unique(y).size == 2:
            frac, mean = calibration_curve(y, s, n_bins=calibration_bins, strategy="uniform")
            out["calibration"] = {"mean_predicted": mean.tolist(), "fraction_positive": frac.tolist()}
    return out


def _empty_classification(threshold: float) -> dict[str, object]:
    """``classification_metrics`` of no case: every figure undefined (scikit-learn refuses empty input)."""
    return {
        "n": 0,
        "positives": 0,
        "negatives": 0,
        "auc": None,
        "auc_ci95": [None, None],
        "threshold": threshold,
        "sensitivity": None,
        "specificity": None,
        "ppv": None,
        "npv": None,
        "confusion_matrix": {"tn": 0, "fp": 0, "fn": 0, "tp": 0},
        "roc": {"fpr": [], "tpr": [], "thresholds": []},
        "calibration": {"mean_predicted": [], "fraction_positive": []},
        "brier": None,
    }


def multiclass_metrics(
    truth: Sequence[str], predicted: Sequence[str], *, n_resamples: int = 2000, seed: int = 0
) -> dict[str, object]:
    """Categorical predictions (e.g. breast density A-D): accuracy with bootstrap 95% CI, Cohen's kappa,
    quadratic-weighted kappa (meaningful when the sorted class names are ordinal), per-class recall and
    precision, and the confusion matrix (rows truth, columns predicted, classes in sorted order)."""
    t, p = np.asarray(truth, dtype=object), np.asarray(predicted, dtype=object)
    classes = sorted(set(t.tolist()) | set(p.tolist()))
    if t.size == 0:
        return {
            "n": 0,
            "classes": [],
            "accuracy": None,
            "accuracy_ci95": [None, None],
            "kappa": None,
            "quadratic_kappa": None,
            "per_class": {},
            "confusion_matrix": [],
        }
    matrix = confusion_matrix(t, p, labels=classes)
    single = len(classes) < 2
    return {
        "n": int(t.size),
        "classes": classes,
        "accuracy": float((t == p).mean()),
        "accuracy_ci95": list(
            bootstrap_ci(lambda i: float((t[i] == p[i]).mean()), t.size, n_resamples=n_resamples, seed=seed)
        ),
        "kappa": None if single else finite(cohen_kappa_score(t, p, labels=classes)),
        "quadratic_kappa": None
        if single
        else finite(cohen_kappa_score(t, p, labels=classes, weights="quadratic")),
        "per_class": {
            c: {
                "n": int(matrix[k].sum()),
                "recall": finite(matrix[k, k] / matrix[k].sum()) if matrix[k].sum() else None,
                "precision": finite(matrix[k, k] / matrix[:, k].sum()) if matrix[:, k].sum() else None,
            }
            for k, c in enumerate(classes)
        },
        "confusion_matrix": matrix.tolist(),
    }


# --- regression -------------------------------------------------------------------------------------


def regression_metrics(
    truth: Sequence[float],
    predicted: Sequence[float],
    *,
    within: float | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, object]:
    """MAE (with bootstrap 95% CI), RMSE, bias (mean of predicted - truth), Bland-Altman 95% limits of
    agreement (bias +- 1.96 SD of the differences, SD with n-1) and the share of cases with
    |error| <= ``within`` (e.g. 12 months for bone age)."""
    t = np.asarray(truth, dtype=float)
    p = np.asarray(predicted, dtype=float)
    diff = p - t
    n = int(diff.size)
    if n == 0:
        return {
            "n": 0,
            "mae": None,
            "mae_ci95": [None, None],
            "rmse": None,
            "bias": None,
            "sd_difference": None,
            "loa_low": None,
            "loa_high": None,
            "within": within,
            "share_within": None,
        }
    sd = float(diff.std(ddof=1)) if n > 1 else None
    bias = float(diff.mean())
    low, high = bootstrap_ci(
        lambda idx: float(np.abs(diff[idx]).mean()), n, n_resamples=n_resamples, seed=seed
    )
    return {
        "n": n,
        "mae": float(np.abs(diff).mean()),
        "mae_ci95": [low, high],
        "rmse": float(np.sqrt((diff**2).mean())),
        "bias": bias,
        "sd_difference": sd,
        "loa_low": None if sd is None else bias - 1.96 * sd,
        "loa_high": None if sd is None else bias + 1.96 * sd,
        "within": within,
        "share_within": None if within is None else float((np.abs(diff) <= within).mean()),
    }


# --- latency ----------------------------------------------------------------------------------------


def latency_metrics(latencies_s: Sequence[float], wall_s: float | None) -> dict[str, object]:
    """Per-case latency percentiles (s) and run throughput (cases per second and per hour of wall time)."""
    values = np.asarray(latencies_s, dtype=float)
    out: dict[str, object] = {"n": int(values.size), "wall_s": wall_s}
    if values.size == 0:
        return {
            **out,
            "mean_s": None,
            "max_s": None,
            **{f"p{q}_s": None for q in LATENCY_PERCENTILES},
            "throughput_per_s": None,
            "throughput_per_h": None,
        }
    out.update(mean_s=float(values.mean()), max_s=float(values.max()))
    out.update({f"p{q}_s": float(np.percentile(values, q)) for q in LATENCY_PERCENTILES})
    rate = values.size / wall_s if wall_s else None
    out.update(throughput_per_s=rate, throughput_per_h=None if rate is None else rate * 3600.0)
    return out
