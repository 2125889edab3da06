"""Paired statistics: the fast DeLong algorithm against the definition, a published example and the bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from inference.evaluation.compare import compare_runs, delong_covariance, delong_test, paired_bootstrap
from inference.evaluation.metrics import auc


def naive_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) straight from the definition: O(m n) pairwise kernel, structural components."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])  # k x m x n
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    return psi.mean(axis=(1, 2)), np.cov(v10) / m + np.cov(v01) / n


def _two_models(n=150, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    shared = rng.normal(size=n)
    a = np.round(
        y * 1.2 + shared + rng.normal(scale=0.8, size=n), 1
    )  # rounded: ties within and across classes
    b = np.round(y * 0.8 + shared + rng.normal(scale=0.8, size=n), 1)
    return y, a, b


def test_fast_delong_equals_definition_with_ties():
    y, a, b = _two_models()
    scores = np.vstack([a, b])
    fast_aucs, fast_cov = delong_covariance(y, scores)
    ref_aucs, ref_cov = naive_delong(y, scores)
    np.testing.assert_allclose(fast_aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(fast_cov, ref_cov, atol=1e-12)
    assert fast_aucs[0] == pytest.approx(auc(y, a))


def test_delong_on_hanley_mcneil_rating_example():
    # Hanley & McNeil, Radiology 1982;143:29-36, table 1: 5-point ratings of 58 normal and 51 abnormal CT images.
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(58, int), np.ones(51, int)]
    aucs, cov = delong_covariance(y, np.r_[normal, abnormal].astype(float))
    assert aucs[0] == pytest.approx(0.8932, abs=5e-5)  # the paper's 0.893
    assert np.sqrt(cov[0, 0]) == pytest.approx(0.032, rel=0.1)  # the paper's SE 0.032 (its approximation)


def test_delong_variance_agrees_with_bootstrap():
    y, a, b = _two_models(n=200, seed=5)
    result = delong_test(y, a, b)
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(3000):
        idx = rng.integers(0, y.size, y.size)
        diffs.append(auc(y[idx], a[idx]) - auc(y[idx], b[idx]))
    bootstrap_se = np.std(diffs, ddof=1)
    delong_se = (result["ci95"][1] - result["ci95"][0]) / (2 * 1.959964)
    assert delong_se == pytest.approx(bootstrap_se, rel=0.15)
    assert result["difference"] == pytest.approx(auc(y, a) - auc(y, b))
    assert 0 <= result["p_value"] <= 1


def test_delong_identical_models_show_no_difference():
    y, a, _ = _two_models()
    result = delong_test(y, a, a)
    assert result["difference"] == 0.0
    assert result["p_value"] == 1.0


def test_delong_needs_both_classes():
    with pytest.raises(ValueError, match="at least 2 positive and 2 negative"):
        delong_covariance([1, 1, 1, 0], np.array([0.1, 0.2, 0.3, 0.4]))


def test_paired_bootstrap_detects_worse_model_and_is_seeded():
    rng = np.random.default_rng(2)
    error_a = np.abs(rng.normal(0, 5, 80))
    error_b = error_a + np.abs(rng.normal(3, 1, 80))  # b is worse on every case

    def stat(i):
        return float(error_a[i].mean() - error_b[i].mean())

    first = paired_bootstrap(stat, 80, n_resamples=500, seed=1)
    assert first == paired_bootstrap(stat, 80, n_resamples=500, seed=1)
    assert first["ci95"][1] < 0
    assert first["p_value"] < 0.01
    assert first["ci95"][0] <= first["difference"] <= first["ci95"][1]


def _records(kind, values):
    return [{"case_id": f"c{i:02d}", "status": "ok", **v} for i, v in enumerate(values)]


def test_compare_regression_runs_pairs_cases_and_counts_the_rest():
    truth = np.linspace(20, 200, 40)
    a = _records("regression", [{"truth": {"value": t}, "metrics": {"error": 2.0}} for t in truth])
    b = _records("regression", [{"truth": {"value": t}, "metrics": {"error": -6.0}} for t in truth])
    b[0]["status"] = "failed"
    result = compare_runs("regression", a, b, n_resamples=300)
    assert (result["paired"], result["only_a"], result["only_b"]) == (39, 1, 0)
    assert result["mae"]["a"] == 2.0 and result["mae"]["b"] == 6.0
    assert result["mae"]["difference"] == pytest.approx(-4.0)


def test_compare_refuses_runs_with_different_labels():
    a = _records("classification", [{"truth": {"label": 1}, "prediction": {"score": 0.4}}] * 3)
    b = _records("classification", [{"truth": {"label": 0}, "prediction": {"score": 0.4}}] * 3)
    assert "different labels" in compare_runs("classification", a, b)["error"]


def test_compare_classification_uses_delong():
    y, a, b = _two_models(n=60)
    ra = _records(
        "c", [{"truth": {"label": int(t)}, "prediction": {"score": float(s)}} for t, s in zip(y, a)]
    )
    rb = _records(
        "c", [{"truth": {"label": int(t)}, "prediction": {"score": float(s)}} for t, s in zip(y, b)]
    )
    result = compare_runs("classification", ra, rb)
    assert result["auc"]["p_value"] == pytest.approx(delong_test(y, a, b)["p_value"])
    assert result["auc"]["method"].startswith("DeLong")
