"""Paired comparison of two evaluation runs on the same cases: DeLong for AUC, paired bootstrap otherwise.

A run is the ``cases.jsonl`` of an evaluation output folder (``runner.CASES_FILE``), so a model can be
compared with another model evaluated now or with results stored earlier. Stored predictions of another
system can also be compared, as a CSV of case id and prediction (``records_from_predictions``). Only cases
that succeeded in both runs are compared; the rest are counted in the result.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from inference.evaluation.metrics import LUNA16_FP_RATES, CaseMatch, finite, froc

# --- DeLong -----------------------------------------------------------------------------------------


def delong_covariance(y_true: Sequence[int], scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for ``scores`` (k models x n cases) against binary ``y_true``.

    Fast algorithm of Sun & Xu (IEEE Signal Process. Lett. 2014): the structural components of DeLong et
    al. (Biometrics 1988) from mid-ranks, O(k n log n) instead of O(k m n).
    """
    y = np.asarray(y_true, dtype=int)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    positives, negatives = scores[:, y == 1], scores[:, y == 0]
    m, n = positives.shape[1], negatives.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positive and 2 negative cases, got {m} and {n}.")
    both = np.concatenate([positives, negatives], axis=1)
    tx = stats.rankdata(positives, axis=1)  # mid-ranks within positives
    ty = stats.rankdata(negatives, axis=1)
    tz = stats.rankdata(both, axis=1)
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v10 = (tz[:, :m] - tx) / n  # per positive: share of negatives it outranks
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives that outrank it
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, covariance


def delong_test(
    y_true: Sequence[int], scores_a: Sequence[float], scores_b: Sequence[float]
) -> dict[str, float | None]:
    """Two correlated ROC AUCs on the same cases: difference (a - b), its 95% CI, z and two-sided p."""
    aucs, cov = delong_covariance(y_true, np.vstack([scores_a, scores_b]))
    difference = float(aucs[0] - aucs[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if variance <= 0.0:  # identical rankings: no difference can be shown
        return {
            "auc_a": float(aucs[0]),
            "auc_b": float(aucs[1]),
            "difference": difference,
            "ci95": [difference, difference],
            "z": None,
            "p_value": 1.0 if difference == 0 else None,
        }
    se = variance**0.5
    z = difference / se
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "difference": difference,
        "ci95": [difference - 1.959964 * se, difference + 1.959964 * se],
        "z": float(z),
        "p_value": float(2.0 * stats.norm.sf(abs(z))),
    }


# --- paired bootstrap -------------------------------------------------------------------------------


def paired_bootstrap(
    statistic: Callable[[np.ndarray], float | None],
    n: int,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Bootstrap of a paired difference ``statistic(indices)`` (model a minus model b on the same cases).

    Returns the observed difference, its percentile 95% CI and a two-sided p-value (twice the share of
    resampled differences on the far side of zero, at most 1).
    """
    observed = finite(statistic(np.arange(n)))
    rng = np.random.default_rng(seed)
    values = np.asarray(
        [v for v in (finite(statistic(rng.integers(0, n, n))) for _ in range(n_resamples)) if v is not None]
    )
    if observed is None or values.size < n_resamples / 2:
        return {"difference": observed, "ci95": [None, None], "p_value": None, "resamples": int(values.size)}
    low, high = np.quantile(values, [0.025, 0.975])
    p = min(1.0, 2.0 * min((values <= 0).mean(), (values >= 0).mean()))
    return {
        "difference": observed,
        "ci95": [float(low), float(high)],
        "p_value": float(p),
        "resamples": int(values.size),
    }


# --- runs -------------------------------------------------------------------------------------------


def pair_records(a: Sequence[dict], b: Sequence[dict]) -> tuple[list[tuple[dict, dict]], dict[str, int]]:
    """Cases that succeeded in both runs, in case id order, and counts of those that did not pair."""
    ok_a = {r["case_id"]: r for r in a if r.get("status") == "ok"}
    ok_b = {r["case_id"]: r for r in b if r.get("status") == "ok"}
    common = sorted(ok_a.keys() & ok_b.keys())
    return [(ok_a[c], ok_b[c]) for c in common], {
        "paired": len(common),
        "only_a": len(ok_a.keys() - ok_b.keys()),
        "only_b": len(ok_b.keys() - ok_a.keys()),
    }


def compare_runs(
    kind: str, a: Sequence[dict], b: Sequence[dict], *, n_resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Paired statistics of run ``a`` against run ``b`` for an evaluation ``kind``."""
    pairs, counts = pair_records(a, b)
    result: dict[str, Any] = {"kind": kind, **counts}
    if not pairs:
        return {
            **result,
            "error": "The runs have no successful case in common; compare runs on the same data set.",
        }
    mismatched = [ra["case_id"] for ra, rb in pairs if ra.get("truth") != rb.get("truth")]
    if mismatched:
        return {
            **result,
            "error": f"{len(mismatched)} case(s) have different labels in the two runs "
            f"(first: {mismatched[0]}); compare runs evaluated against the same labels.",
        }
    if kind == "classification":
        y = [ra["truth"]["label"] for ra, _ in pairs]
        result["auc"] = delong_test(
            y, [ra["prediction"]["score"] for ra, _ in pairs], [rb["prediction"]["score"] for _, rb in pairs]
        )
        result["auc"]["method"] = "DeLong (fast algorithm of Sun & Xu)"
    elif kind == "multiclass":
        ca = np.asarray([ra["prediction"]["label"] == ra["truth"]["label"] for ra, _ in pairs], dtype=float)
        cb = np.asarray([rb["prediction"]["label"] == rb["truth"]["label"] for _, rb in pairs], dtype=float)
        result["accuracy"] = {
            "a": float(ca.mean()),
            "b": float(cb.mean()),
            "method": "paired bootstrap",
            **paired_bootstrap(
                lambda i: float(ca[i].mean() - cb[i].mean()), len(pairs), n_resamples=n_resamples, seed=seed
            ),
        }
    elif kind == "regression":
        ea = np.asarray([abs(ra["metrics"]["error"]) for ra, _ in pairs])
        eb = np.asarray([abs(rb["metrics"]["error"]) for _, rb in pairs])
        result["mae"] = {
            "a": float(ea.mean()),
            "b": float(eb.mean()),
            "method": "paired bootstrap",
            **paired_bootstrap(
                lambda i: float(ea[i].mean() - eb[i].mean()), len(pairs), n_resamples=n_resamples, seed=seed
            ),
        }
    elif kind == "segmentation":
        result["dice"] = {}
        labels = sorted({k for ra, _ in pairs for k in ra["metrics"]["dice"]}, key=int)
        for label in labels:
            da = np.asarray([_nan(ra["metrics"]["dice"].get(label)) for ra, _ in pairs])
            db = np.asarray([_nan(rb["metrics"]["dice"].get(label)) for _, rb in pairs])
            keep = ~(np.isnan(da) | np.isnan(db))
            da, db = da[keep], db[keep]
            result["dice"][label] = {
                "a": finite(da.mean()) if da.size else None,
                "b": finite(db.mean()) if db.size else None,
                "method": "paired bootstrap",
                **paired_bootstrap(
                    lambda i, da=da, db=db: float(da[i].mean() - db[i].mean()),
                    int(da.size),
                    n_resamples=n_resamples,
                    seed=seed,
                ),
            }
    elif kind == "detection":
        ma = [case_match(ra) for ra, _ in pairs]
        mb = [case_match(rb) for _, rb in pairs]

        def cpm_difference(i: np.ndarray) -> float | None:
            cpm_a, cpm_b = froc([ma[k] for k in i])["cpm"], froc([mb[k] for k in i])["cpm"]
            return None if cpm_a is None or cpm_b is None else cpm_a - cpm_b

        result["cpm"] = {
            "a": froc(ma)["cpm"],
            "b": froc(mb)["cpm"],
            "fp_rates": list(LUNA16_FP_RATES),
            "method": "paired bootstrap over scans",
            **paired_bootstrap(cpm_difference, len(pairs), n_resamples=n_resamples, seed=seed),
        }
    else:
        raise ValueError(
            f"Unknown evaluation kind {kind!r}; use classification, multiclass, regression, segmentation or detection."
        )
    return result


def case_match(record: dict) -> CaseMatch:
    """The stored LUNA16 match of a detection case record."""
    return CaseMatch(
        tp_scores=list(record["metrics"]["tp_scores"]), fp_scores=list(record["metrics"]["fp_scores"])
    )


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


PREDICTION_COLUMNS = {
    "classification": ("score", "probability", "prediction"),
    "regression": ("predicted", "value", "prediction"),
}


def records_from_predictions(path: Path, reference: Sequence[dict], kind: str) -> list[dict]:
    """Stored predictions (CSV: ``case_id`` and a score or value column) as records scored against the labels of
    the ``reference`` run, for classification and regression; a ``cases.csv`` of an earlier run also works."""
    if kind not in PREDICTION_COLUMNS:
        raise ValueError(
            f"Stored predictions can be compared for classification and regression, not {kind}; "
            "compare two evaluation output folders instead."
        )
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    columns = {c.strip().lower(): c for c in (rows[0].keys() if rows else [])}
    column = next((columns[c] for c in PREDICTION_COLUMNS[kind] if c in columns), None)
    if "case_id" not in columns or column is None:
        raise ValueError(
            f"{Path(path).name}: expected columns case_id and one of {', '.join(PREDICTION_COLUMNS[kind])}."
        )
    stored: dict[str, float] = {}
    for row in rows:
        try:
            stored[row[columns["case_id"]].strip()] = float(row[column])
        except (TypeError, ValueError):
            continue  # a failed case of that run (empty prediction) does not pair
    records = []
    for ref in reference:
        if ref.get("status") != "ok" or ref["case_id"] not in stored:
            continue
        value = stored[ref["case_id"]]
        if kind == "classification":
            records.append(
                {
                    "case_id": ref["case_id"],
                    "status": "ok",
                    "truth": ref["truth"],
                    "prediction": {"score": value},
                    "metrics": {},
                }
            )
        else:
            records.append(
                {
                    "case_id": ref["case_id"],
                    "status": "ok",
                    "truth": ref["truth"],
                    "prediction": {"value": value},
                    "metrics": {"error": value - ref["truth"]["value"]},
                }
            )
    return records
