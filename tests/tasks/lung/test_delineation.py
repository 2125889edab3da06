"""Nodule delineation on the source grid (``delineate``) on small analytic CT volumes: a seed that under-covers
the nodule (as the network's mask does) grows to the nodule's half-maximum boundary; chest wall and abutting
vessels stay out; solid, part-solid and ground-glass nodules keep their solid component."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from inference.errors import BundleError
from inference.tasks.lung_nodules import Delineation, delineate, nodule_type

SPACING = (1.5, 0.7, 0.7)
SHAPE = (40, 96, 96)
LUNG, SOLID, GGO = -850.0, 40.0, -620.0
TYPES = {"solid_hu": -300, "ground_glass_max_solid_fraction": 0.015, "solid_min_solid_fraction": 0.5}


def grid_mm() -> list[np.ndarray]:
    """(k, j, i) voxel positions in mm."""
    return np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING, strict=True)), indexing="ij")


def distance_mm(centre_mm) -> np.ndarray:
    k, j, i = grid_mm()
    return np.sqrt((k - centre_mm[0]) ** 2 + (j - centre_mm[1]) ** 2 + (i - centre_mm[2]) ** 2)


def scan(hu: np.ndarray, seed: int = 0) -> np.ndarray:
    """Scanner-like blur (about 0.5 voxel) and correlated noise (SD 20 HU)."""
    rng = np.random.default_rng(seed)
    blurred = ndimage.gaussian_filter(hu.astype(np.float32), sigma=(0.45, 0.6, 0.6))
    noise = ndimage.gaussian_filter(rng.standard_normal(SHAPE).astype(np.float32), sigma=(0.5, 0.9, 0.9))
    return blurred + noise * (20.0 / noise.std())


def nodule(kind: str, radius_mm: float, centre_mm, core_ratio: float = 0.45):
    """(hu, nodule mask, solid mask) of one nodule in lung parenchyma."""
    d = distance_mm(centre_mm)
    mask = d <= radius_mm
    hu = np.full(SHAPE, LUNG, dtype=np.float32)
    hu[mask] = SOLID if kind == "solid" else GGO
    solid = mask if kind == "solid" else (d <= core_ratio * radius_mm) if kind == "part-solid" else mask & False
    hu[solid] = SOLID
    return hu, mask, solid


def under_segmented(mask: np.ndarray, by_mm: float) -> np.ndarray:
    """The network's mask: the nodule shrunk by ``by_mm``."""
    return ndimage.distance_transform_edt(mask, sampling=SPACING) > by_mm


def diameter_mm(mask: np.ndarray) -> float:
    return float(np.cbrt(6 * mask.sum() * np.prod(SPACING) / np.pi))


CENTRE = (30.0, 33.6, 33.6)


@pytest.mark.parametrize(
    ("kind", "radius_mm"),
    [("solid", 3.0), ("solid", 6.0), ("solid", 12.0), ("part-solid", 7.0), ("ground-glass", 6.0),
     ("ground-glass", 11.0)],
    ids=["solid-6mm", "solid-12mm", "solid-24mm", "part-solid-14mm", "ground-glass-12mm", "ground-glass-22mm"],
)
def test_seed_grows_to_the_nodule_boundary_and_keeps_its_type(kind, radius_mm):
    hu, mask, _ = nodule(kind, radius_mm, CENTRE)
    seed = under_segmented(mask, by_mm=0.3 * radius_mm)

    found, found_solid = delineate(scan(hu), seed, SPACING, Delineation())

    assert diameter_mm(found) == pytest.approx(2 * radius_mm, abs=0.6)
    centroid = np.argwhere(found).mean(axis=0) * SPACING
    assert np.allclose(centroid, CENTRE, atol=0.35)
    assert nodule_type(found_solid.sum() / found.sum(), TYPES) == kind


def test_chest_wall_is_cut_off_at_the_pleura():
    hu, mask, _ = nodule("solid", 5.0, (30.0, 33.6, 40.0))
    wall = np.zeros(SHAPE, dtype=bool)
    wall[:, :, round(45.0 / SPACING[2]):] = True  # the nodule touches the wall at x = 45 mm
    hu[wall] = SOLID

    found, _ = delineate(scan(hu), under_segmented(mask, 1.5), SPACING, Delineation())

    assert diameter_mm(found) == pytest.approx(10.0, abs=0.8)
    assert not (found & ndimage.binary_erosion(wall, iterations=2)).any()


@pytest.mark.parametrize("kind", ["solid", "ground-glass"])
def test_abutting_vessel_is_cut_off_and_not_counted_as_solid(kind):
    hu, mask, _ = nodule(kind, 6.0, CENTRE)
    k, j, _ = grid_mm()
    vessel = (np.hypot(k - CENTRE[0], j - (CENTRE[1] + 6.5)) <= 1.2) & ~mask  # a 2.4 mm vessel grazing the nodule
    hu[vessel] = SOLID

    found, solid = delineate(scan(hu), under_segmented(mask, 2.0), SPACING, Delineation())

    assert diameter_mm(found) == pytest.approx(12.0, abs=0.8)
    assert (found & vessel).sum() < 0.03 * found.sum()
    assert nodule_type(solid.sum() / found.sum(), TYPES) == kind


def test_seed_inside_the_chest_wall_gives_nothing():
    hu = np.full(SHAPE, LUNG, dtype=np.float32)
    hu[:, :, 48:] = SOLID
    seed = np.zeros(SHAPE, dtype=bool)
    seed[28:32, 40:46, 70:76] = True

    assert delineate(scan(hu), seed, SPACING, Delineation()) is None


def test_unknown_delineation_setting_is_a_bundle_error_naming_it():
    with pytest.raises(BundleError, match=r"unknown key\(s\) \['margin'\]; valid keys are \['solid_hu'"):
        Delineation.from_settings({"delineation": {"margin": 4.0}})


def test_delineation_settings_take_solid_hu_from_nodule_type():
    settings = Delineation.from_settings({"nodule_type": {"solid_hu": -250}, "delineation": {"ground_glass_hu": -700}})

    assert (settings.solid_hu, settings.ground_glass_hu) == (-250.0, -700.0)
