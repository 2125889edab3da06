"""Nodule measurements on analytic shapes: axial long/short axes, type from attenuation, side and zone."""

from __future__ import annotations

import numpy as np
import pytest

from inference.tasks.lung_nodules import (
    ChestGeometry,
    axial_axes,
    nodule_type,
    side_and_zone,
)


def ellipsoid(semi_mm, spacing, angle_deg=0.0, offset=(0.3, 0.2, 0.1)) -> np.ndarray:
    """Boolean [k, j, i] ellipsoid with semi-axes (a along rotated x, b along rotated y, c along z) in mm."""
    a, b, c = semi_mm
    half = [int(np.ceil(max(semi_mm) / s)) + 2 for s in spacing]
    k, j, i = np.meshgrid(*(np.arange(-h, h + 1) for h in half), indexing="ij")
    z = (k - offset[0]) * spacing[0]
    y = (j - offset[1]) * spacing[1]
    x = (i - offset[2]) * spacing[2]
    t = np.deg2rad(angle_deg)
    u, v = x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 + (z / c) ** 2 <= 1.0


@pytest.mark.parametrize(
    ("semi", "spacing", "angle"),
    [
        ((3.0, 3.0, 3.0), (1.0, 0.7, 0.7), 0.0),
        ((5.0, 5.0, 5.0), (0.6, 0.6, 0.6), 0.0),
        ((10.0, 10.0, 10.0), (2.5, 0.8, 0.8), 0.0),
        ((6.0, 4.0, 5.0), (1.0, 0.7, 0.7), 0.0),
        ((6.0, 4.0, 5.0), (1.25, 0.6, 0.6), 30.0),
        ((12.0, 7.0, 9.0), (1.0, 0.9, 0.9), 65.0),
    ],
    ids=["sphere-6mm", "sphere-10mm", "sphere-20mm-thick-slices", "ellipsoid-12x8", "ellipsoid-12x8-rotated",
         "ellipsoid-24x14-rotated"],
)
def test_axial_axes_match_analytic_diameters_within_1mm(semi, spacing, angle):
    axes = axial_axes(ellipsoid(semi, spacing, angle), (spacing[1], spacing[2]))

    assert axes.long_mm == pytest.approx(2 * semi[0], abs=1.0)
    assert axes.short_mm == pytest.approx(2 * semi[1], abs=1.0)
    assert axes.mean_mm == pytest.approx(semi[0] + semi[1], abs=1.0)


def test_axial_axes_pick_the_slice_with_the_largest_area():
    mask = np.zeros((5, 20, 20), dtype=bool)
    mask[1, 5:8, 5:8] = True
    mask[3, 2:15, 4:9] = True

    axes = axial_axes(mask, (1.0, 1.0))

    assert axes.slice_k == 3
    assert axes.long_mm == pytest.approx(np.hypot(13, 5))


def test_axial_axes_of_empty_mask_are_none():
    assert axial_axes(np.zeros((3, 4, 4), dtype=bool), (1.0, 1.0)) is None


SETTINGS = {"solid_hu": -300, "ground_glass_max_solid_fraction": 0.015, "solid_min_solid_fraction": 0.5}


@pytest.mark.parametrize(
    ("solid_share", "expected"),
    [(0.0, "ground-glass"), (0.01, "ground-glass"), (0.03, "part-solid"), (0.2, "part-solid"), (0.45, "part-solid"), (0.7, "solid"),
     (1.0, "solid")],
    ids=["no-solid-voxels", "1pct-solid", "3pct-solid", "20pct-solid", "45pct-solid", "70pct-solid", "all-solid"],
)
def test_nodule_type_follows_share_of_solid_volume(solid_share, expected):
    assert nodule_type(solid_share, SETTINGS) == expected


CHEST = ChestGeometry(midline_x=10.0, lung_z=(-100.0, 200.0))


@pytest.mark.parametrize(
    ("lps", "expected"),
    [((60.0, 0.0, 150.0), ("left", "upper")), ((-40.0, 0.0, 50.0), ("right", "middle")),
     ((5.0, 0.0, -50.0), ("right", "lower")), ((15.0, 0.0, -20.0), ("left", "lower"))],
    ids=["left-upper", "right-middle", "right-lower-near-midline", "left-of-shifted-midline"],
)
def test_side_uses_lps_x_against_body_midline_and_zone_lung_thirds(lps, expected):
    assert side_and_zone(lps, CHEST) == expected


def test_zone_is_unknown_without_lungs():
    assert side_and_zone((0.0, 0.0, 0.0), ChestGeometry(midline_x=-5.0, lung_z=None)) == ("left", None)
