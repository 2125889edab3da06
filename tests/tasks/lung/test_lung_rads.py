"""Lung-RADS v2022 baseline categories per nodule and for the study."""

from __future__ import annotations

import pytest

from inference.tasks.lung_nodules import lung_rads_category, study_category

CASES = [
    # (type, mean diameter, solid mean diameter, category)
    ("solid", 3.0, 3.0, "2"),
    ("solid", 5.9, 5.9, "2"),
    ("solid", 6.0, 6.0, "3"),
    ("solid", 7.9, 7.9, "3"),
    ("solid", 8.0, 8.0, "4A"),
    ("solid", 14.9, 14.9, "4A"),
    ("solid", 15.0, 15.0, "4B"),
    ("solid", 28.0, 28.0, "4B"),
    ("part-solid", 5.9, 3.0, "2"),
    ("part-solid", 6.0, 3.0, "3"),
    ("part-solid", 12.0, 5.9, "3"),
    ("part-solid", 12.0, 6.0, "4A"),
    ("part-solid", 12.0, 7.9, "4A"),
    ("part-solid", 12.0, 8.0, "4B"),
    ("ground-glass", 5.0, 0.0, "2"),
    ("ground-glass", 29.9, 0.0, "2"),
    ("ground-glass", 30.0, 0.0, "3"),
]


@pytest.mark.parametrize(
    ("kind", "diameter", "solid", "expected"),
    CASES,
    ids=[f"{k}-{d}mm-solid{s}mm-is-{c}" for k, d, s, c in CASES],
)
def test_lung_rads_category_follows_v2022_baseline_table(kind, diameter, solid, expected):
    assert lung_rads_category(kind, diameter, solid) == expected


def test_lung_rads_category_rounds_mean_diameter_to_a_tenth_of_a_millimetre():
    assert lung_rads_category("solid", 5.96) == "3"
    assert lung_rads_category("solid", 5.94) == "2"


def test_lung_rads_category_rejects_unknown_type():
    with pytest.raises(ValueError, match="Unknown nodule type 'calcified'"):
        lung_rads_category("calcified", 5.0)


@pytest.mark.parametrize(
    ("categories", "expected"),
    [([], "1"), (["2"], "2"), (["2", "4A", "3"], "4A"), (["4B", "4A"], "4B"), (["3", "2"], "3")],
    ids=["no-nodule-is-1", "single", "most-suspicious-wins", "4B-above-4A", "3-above-2"],
)
def test_study_category_is_the_most_suspicious_nodule(categories, expected):
    assert study_category(categories) == expected
