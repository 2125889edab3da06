"""Metric functions on inputs whose answers can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from inference.evaluation.metrics import (
    Nodule,
    bootstrap_ci,
    classification_metrics,
    froc,
    latency_metrics,
    match_candidates,
    regression_metrics,
    segmentation_case_metrics,
)


def _box(shape, start, stop, value=1):
    mask = np.zeros(shape, dtype=np.int32)
    mask[tuple(slice(a, b) for a, b in zip(start, stop))] = value
    return mask


def test_dice_of_half_overlapping_boxes_is_half():
    truth = _box((4, 8, 8), (1, 2, 2), (3, 4, 7))  # 2 x 2 x 5 = 20 voxels
    pred = _box((4, 8, 8), (1, 2, 4), (3, 4, 9))  # shifted 2 columns: 2 x 2 x 4 = 16, overlap 2 x 2 x 3 = 12
    out = segmentation_case_metrics(pred, truth, (1.0, 1.0, 1.0), [1])
    assert out["dice"]["1"] == pytest.approx(2 * 12 / (20 + 16))


def test_hd95_and_surface_dice_of_single_voxels_use_spacing():
    truth = _box((5, 5, 9), (2, 2, 2), (3, 3, 3))
    pred = _box((5, 5, 9), (2, 2, 6), (3, 3, 7))  # 4 columns away, columns 2.5 mm apart -> 10 mm
    near = segmentation_case_metrics(pred, truth, (1.0, 1.0, 2.5), [1], surface_tolerance_mm=2.0)
    far = segmentation_case_metrics(pred, truth, (1.0, 1.0, 2.5), [1], surface_tolerance_mm=11.0)
    assert near["hd95"]["1"] == pytest.approx(10.0)
    assert near["dice"]["1"] == 0.0
    assert near["surface_dice"]["1"] == 0.0
    assert far["surface_dice"]["1"] == 1.0


def test_identical_masks_score_perfectly_per_label():
    labels = _box((6, 6, 6), (0, 0, 0), (3, 6, 6), 1) + _box((6, 6, 6), (3, 0, 0), (6, 3, 3), 2)
    out = segmentation_case_metrics(labels, labels.copy(), (2.0, 1.0, 1.0), [1, 2])
    assert out["dice"] == {"1": pytest.approx(1.0), "2": pytest.approx(1.0)}
    assert out["hd95"] == {"1": 0.0, "2": 0.0}


@pytest.mark.parametrize(
    ("pred_has", "truth_has", "dice", "hd95"),
    [(False, False, 1.0, 0.0), (True, False, 0.0, None), (False, True, 0.0, None)],
    ids=["both-empty", "false-positive-only", "missed-entirely"],
)
def test_empty_masks_have_defined_scores(pred_has, truth_has, dice, hd95):
    full, empty = _box((4, 4, 4), (1, 1, 1), (3, 3, 3)), np.zeros((4, 4, 4), dtype=np.int32)
    out = segmentation_case_metrics(full if pred_has else empty, full if truth_has else empty, (1, 1, 1), [1])
    assert out["dice"]["1"] == dice
    assert out["hd95"]["1"] == hd95


def _constructed_detection():
    scan_a = match_candidates(
        [((1, 1, 1), 0.9), ((2, 0, 0), 0.5), ((100, 0, 0), 0.8), ((53.5, 0, 0), 0.3)],
        [Nodule((0, 0, 0), 10.0), Nodule((50, 0, 0), 6.0)],
    )
    scan_b = match_candidates(
        [((30, 31, 30), 0.95), ((10, 10, 12), 0.4), ((70, 0, 0), 0.6)],
        [Nodule((10, 10, 10), 8.0), Nodule((30, 30, 30), 10.0, exclude=True)],
    )
    return scan_a, scan_b


def test_luna16_matching_counts_best_hit_once_and_ignores_excluded():
    scan_a, scan_b = _constructed_detection()
    assert scan_a.tp_scores == [
        0.9,
        None,
    ]  # second hit on nodule 1 is neither TP nor FP; 3.5 mm > 3 mm radius
    assert sorted(scan_a.fp_scores) == [0.3, 0.8]
    assert scan_b.tp_scores == [0.4]  # the excluded nodule is not a target
    assert scan_b.fp_scores == [0.6]  # the hit on the excluded nodule is not a false positive


def test_matching_in_two_dimensions():
    match = match_candidates([((20, 24), 0.7), ((20, 40), 0.2)], [Nodule((20.0, 24.0), 20.0)])
    assert (match.tp_scores, match.fp_scores) == ([0.7], [0.2])


def test_froc_sensitivities_and_cpm_on_constructed_set():
    result = froc(_constructed_detection())
    # Thresholds 0.9, 0.8, 0.6, 0.4, 0.3 -> (FP/scan, sensitivity): (0, 1/3) (.5, 1/3) (1, 1/3) (1, 2/3) (1.5, 2/3)
    assert result["fps_per_scan"] == pytest.approx([0, 0, 0.5, 1.0, 1.0, 1.5])
    assert result["sensitivity"] == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    expected = {"0.125": 1 / 3, "0.25": 1 / 3, "0.5": 1 / 3, "1": 2 / 3, "2": 2 / 3, "4": 2 / 3, "8": 2 / 3}
    assert result["sensitivity_at"] == pytest.approx(expected)
    assert result["cpm"] == pytest.approx(11 / 21)
    assert (result["nodules"], result["detected_nodules"], result["false_positives"]) == (3, 2, 3)


def test_classification_metrics_hand_example():
    out = classification_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], threshold=0.5, n_resamples=200)
    assert out["auc"] == pytest.approx(0.75)
    assert out["confusion_matrix"] == {"tn": 2, "fp": 0, "fn": 1, "tp": 1}
    assert (out["sensitivity"], out["specificity"]) == (0.5, 1.0)
    assert out["brier"] == pytest.approx((0.01 + 0.16 + 0.65**2 + 0.04) / 4)


def test_classification_metrics_with_one_class_keep_the_brier_score():
    """AUC is undefined without both classes; the Brier score is not."""
    out = classification_metrics([0, 0, 0], [0.1, 0.2, 0.3], threshold=0.5, n_resamples=50)
    assert out["auc"] is None and out["brier"] == pytest.approx((0.01 + 0.04 + 0.09) / 3)


def test_auc_bootstrap_ci_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 120)
    scores = np.clip(0.5 * y + rng.normal(0.25, 0.25, y.size), 0, 1)
    first = classification_metrics(y, scores, n_resamples=500, seed=7)
    again = classification_metrics(y, scores, n_resamples=500, seed=7)
    other = classification_metrics(y, scores, n_resamples=500, seed=8)
    low, high = first["auc_ci95"]
    assert low < first["auc"] < high
    assert first["auc_ci95"] == again["auc_ci95"]
    assert first["auc_ci95"] != other["auc_ci95"]


def test_bootstrap_ci_undefined_for_single_case():
    assert bootstrap_ci(lambda idx: 1.0, 1) == (None, None)


def test_regression_and_bland_altman_on_known_data():
    out = regression_metrics([10, 20, 30, 40], [12, 19, 33, 40], within=2, n_resamples=200)
    sd = np.sqrt(10 / 3)  # differences 2, -1, 3, 0 around their mean 1
    assert out["mae"] == pytest.approx(1.5)
    assert out["rmse"] == pytest.approx(np.sqrt(3.5))
    assert out["bias"] == pytest.approx(1.0)
    assert (out["loa_low"], out["loa_high"]) == pytest.approx((1 - 1.96 * sd, 1 + 1.96 * sd))
    assert out["share_within"] == 0.75
    assert out["mae_ci95"][0] <= out["mae"] <= out["mae_ci95"][1]


def test_latency_percentiles_and_throughput():
    out = latency_metrics(list(range(1, 101)), wall_s=50.0)
    assert out["p50_s"] == pytest.approx(50.5)
    assert out["p95_s"] == pytest.approx(95.05)
    assert out["throughput_per_s"] == pytest.approx(2.0)
    assert out["throughput_per_h"] == pytest.approx(7200.0)


def test_rank_auc_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from inference.evaluation.metrics import auc

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(y * 0.7, 1.0), 1)  # rounding makes many ties
    assert auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert auc(np.ones(5), np.arange(5)) is None


def test_multiclass_density_accuracy_kappa_and_confusion():
    from inference.evaluation.metrics import multiclass_metrics

    truth = ["A", "B", "B", "C", "D", "D"]
    predicted = ["A", "B", "C", "C", "D", "C"]
    out = multiclass_metrics(truth, predicted, n_resamples=200)
    assert out["classes"] == ["A", "B", "C", "D"]
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["confusion_matrix"] == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    assert out["per_class"]["B"] == {"n": 2, "recall": 0.5, "precision": 1.0}
    # Cohen's kappa by hand: p_o = 4/6; p_e = sum(row_k * col_k) / 36 = (1*1 + 2*1 + 1*3 + 2*1) / 36 = 8/36
    assert out["kappa"] == pytest.approx((4 / 6 - 8 / 36) / (1 - 8 / 36))
    assert out["quadratic_kappa"] > out["kappa"]  # the errors are all one category off
