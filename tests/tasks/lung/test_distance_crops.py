"""The delineation's distance transforms on cropped boxes give the full-volume answers where they are read."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from inference.tasks.lung_nodules import _near_mm, _opening_mm

SPACING = (1.25, 0.7, 0.8)


def _blobs(seed: int, shape=(30, 40, 36), count: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape)
    mask = np.zeros(shape, bool)
    for _ in range(count):
        centre = rng.uniform(0, shape)
        radius = rng.uniform(2, 7)
        mask |= ((k - centre[0]) * 1.25) ** 2 + ((j - centre[1]) * 0.7) ** 2 + ((i - centre[2]) * 0.8) ** 2 <= radius**2
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_near_equals_the_full_distance_transform(seed):
    mask = _blobs(seed, count=2)
    full = ndimage.distance_transform_edt(~mask, sampling=SPACING) <= 4.5
    np.testing.assert_array_equal(_near_mm(mask, 4.5, SPACING), full)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("radius", [1.5, 3.0, 6.0])
def test_opening_equals_the_full_one_everywhere_or_inside_the_box_asked_for(seed, radius):
    mask = _blobs(seed)
    core = ndimage.distance_transform_edt(mask, sampling=SPACING) > radius
    full = (ndimage.distance_transform_edt(~core, sampling=SPACING) <= radius) if core.any() else np.zeros_like(mask)
    np.testing.assert_array_equal(_opening_mm(mask, radius, SPACING), full)
    within = (slice(5, 20), slice(10, 30), slice(3, 25))
    np.testing.assert_array_equal(_opening_mm(mask, radius, SPACING, within=within)[within], full[within])


def test_nothing_near_an_empty_mask_or_outside_the_reach_of_the_box():
    assert not _near_mm(np.zeros((5, 6, 7), bool), 3.0, SPACING).any()
    mask = np.zeros((30, 30, 30), bool)
    mask[0, 0, 0] = True  # far from the box: scipy alone would measure to a point outside a crop without zeros
    assert not _near_mm(mask, 2.0, SPACING, within=(slice(20, 30),) * 3).any()
