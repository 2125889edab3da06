"""Boxes of a detection bundle on the source grid: the corner mapping and the seed each box gives."""

from __future__ import annotations

import numpy as np
import pytest

from inference.detection import Detection, box_to_source, seed_component
from inference.tasks.segmentation import ras_affine, volume_to_metatensor


def test_box_corners_map_through_the_model_grid_affine_onto_source_indices(kit):
    """A box drawn on the preprocessed grid of a feet-first, transposed volume (Orientationd flips and permutes
    it) covers the source voxels it was drawn around."""
    from monai.transforms import Orientation, Spacing

    volume = kit.make_volume(np.zeros((12, 30, 26)), spacing=(2.5, 0.9, 0.8))
    image = Spacing(pixdim=(1.8, 1.8, 1.8))(Orientation(axcodes="RAS")(volume_to_metatensor(volume)))
    to_source = np.linalg.inv(ras_affine(volume)) @ image.affine.double().numpy()
    source_kji = np.array([5.0, 12.0, 9.0])
    model_index = (np.linalg.inv(to_source) @ [*source_kji, 1.0])[:3]
    half = np.array([2.0, 3.0, 1.5])  # model-grid voxels
    lo, hi = box_to_source(np.concatenate([model_index - half, model_index + half]), to_source)
    np.testing.assert_allclose((lo + hi) / 2, source_kji, atol=1e-9)
    assert np.all(lo < source_kji) and np.all(hi > source_kji)
    # the box's extent in mm is kept, whatever axes it lands on: 1.8 mm model voxels, source spacing per axis
    extent_mm = sorted((hi - lo) * np.asarray(volume.spacing))
    np.testing.assert_allclose(extent_mm, sorted(2 * half * 1.8), atol=1e-9)


def test_seed_is_the_ellipsoid_inscribed_in_the_box_with_the_detection_score(kit):
    volume = kit.make_volume(np.full((20, 40, 40), -800.0), spacing=(1.0, 1.0, 1.0))
    seed = seed_component(Detection((5.0, 10.0, 12.0), (13.0, 20.0, 20.0), 0, 0.8), volume)
    assert seed is not None
    component, mask = seed
    assert mask.shape == tuple(b - a for a, b in zip(*component.bbox_kji, strict=True))
    assert mask.sum() == pytest.approx(4 / 3 * np.pi * 4 * 5 * 4, rel=0.1)
    np.testing.assert_allclose(component.centroid_kji, (9.0, 15.0, 16.0), atol=0.05)
    assert component.mean_probability == 0.8 and component.mean_intensity == pytest.approx(-800.0)


def test_seed_of_a_box_at_the_edge_is_clipped_and_a_box_outside_gives_none(kit):
    volume = kit.make_volume(np.zeros((10, 20, 20)), spacing=(1.0, 1.0, 1.0))
    edge = seed_component(Detection((-4.0, 5.0, 5.0), (3.0, 11.0, 11.0), 0, 0.9), volume)
    assert edge is not None and edge[0].bbox_kji[0][0] == 0 and edge[1].any()
    assert seed_component(Detection((12.0, 5.0, 5.0), (16.0, 9.0, 9.0), 0, 0.9), volume) is None
