"""The breast region of a detector-sized image, found on a sampling of it, matches the full-resolution one."""

from __future__ import annotations

import numpy as np

from inference.tasks.mammography_views import _breast_region, breast_region


def test_breast_region_of_a_large_image_matches_full_resolution_to_a_few_pixels() -> None:
    rows, cols = 3328, 2560
    r, c = np.mgrid[0:rows, 0:cols]
    breast = ((r - rows / 2) / (0.45 * rows)) ** 2 + (c / (0.7 * cols)) ** 2 <= 1  # a half ellipse on the left
    rng = np.random.default_rng(0)
    image = np.where(breast, 2500.0, 300.0) + rng.normal(0, 40, (rows, cols))
    found, why = breast_region(image.astype(np.float32))
    full, _ = _breast_region(image.astype(np.float32))
    assert found is not None and why == "" and found.shape == (rows, cols) and found.dtype == bool
    assert (found != full).mean() < 0.002  # the outline moves by at most one sampling step (4 pixels)
    assert (found & breast).sum() / (found | breast).sum() > 0.99


def test_small_images_are_not_sampled() -> None:
    image = np.full((300, 200), 100.0, dtype=np.float32)
    image[50:250, :120] = 3000.0
    found, _ = breast_region(image)
    full, _ = _breast_region(image)
    assert np.array_equal(found, full)
