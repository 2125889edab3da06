"""Orientationd + Spacingd as one separable resampling (``fused_resampling``): the same grid, meta and applied
operations as MONAI running them one by one, samples at least as close to MONAI's float64 path, the same
inverse; anything it cannot reproduce is left to MONAI."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Orientationd, Spacingd

from inference.tasks.segmentation import fused_resampling, preprocess

FLOAT64_TOLERANCE = 2e-3
"""|fused - MONAI float64| in HU on uniform -1000..2000 HU noise: float32 arithmetic on float64 positions."""
MONAI_FLOAT32_TOLERANCE = 0.03
"""|fused - MONAI float32|: MONAI's float32 sampling grid is off by ~1e-6 voxel (see test_float32_resampling)."""

AXIS_ALIGNED = {
    "head-first": np.array([[-0.7, 0, 0, 120.0], [0, -0.8, 0, -80.0], [0, 0, 2.5, 40.0], [0, 0, 0, 1]]),
    "feet-first": np.array([[0.7, 0, 0, -20.0], [0, -0.8, 0, 60.0], [0, 0, -1.0, 40.0], [0, 0, 0, 1]]),
    "permuted": np.array([[0, 0, -0.7, 120.0], [0, 0.8, 0, -80.0], [-2.5, 0, 0, 40.0], [0, 0, 0, 1]]),
}


def _image(affine: np.ndarray, seed: int = 0) -> MetaTensor:
    """A CT-like (1, k, j, i) volume of uniform -1000..2000 HU noise (the worst case for interpolation error)."""
    rng = np.random.default_rng(seed)
    values = torch.from_numpy(rng.uniform(-1000, 2000, (1, 23, 40, 37)).astype(np.float32))
    return MetaTensor(values, affine=torch.as_tensor(affine, dtype=torch.float64))


def _pipeline(dtype: Any = torch.float32, **spacing: Any) -> Compose:
    options = {"pixdim": (1.5, 1.3, 2.0), "mode": "bilinear"} | spacing
    return Compose([Orientationd(keys="image", axcodes="RAS"), Spacingd(keys="image", dtype=dtype, **options)])


@pytest.mark.parametrize("padding", ["border", "zeros"])
@pytest.mark.parametrize("pixdim", [(1.5, 1.3, 2.0), (0.5, 0.6, 0.9)], ids=["down", "up"])
@pytest.mark.parametrize("geometry", list(AXIS_ALIGNED))
def test_fused_matches_monai_one_by_one(geometry: str, pixdim: tuple[float, ...], padding: str) -> None:
    image = _image(AXIS_ALIGNED[geometry])
    pipeline = _pipeline(pixdim=pixdim, padding_mode=padding)
    fused = fused_resampling(list(pipeline.transforms), {"image": image})
    assert fused is not None
    result = fused["image"]
    reference = pipeline({"image": image.clone()})["image"]
    truth = _pipeline(dtype=torch.float64, pixdim=pixdim, padding_mode=padding)({"image": image.clone()})["image"]
    assert result.shape == reference.shape and result.dtype == torch.float32 and result.is_contiguous()
    assert torch.equal(result.affine, reference.affine)
    assert float((result.double() - truth.double()).abs().max()) <= FLOAT64_TOLERANCE
    assert float((result - reference).abs().max()) <= MONAI_FLOAT32_TOLERANCE
    for ours, theirs in zip(result.applied_operations, reference.applied_operations, strict=True):
        assert ours.keys() == theirs.keys()
        assert {k: v for k, v in ours.items() if k != "extra_info"} == {
            k: v for k, v in theirs.items() if k != "extra_info"
        }
    assert set(result.meta) == set(reference.meta)
    assert not image.pending_operations and not image.applied_operations  # the input is left as it was


def test_inverse_of_fused_resampling_matches_monai() -> None:
    image = _image(AXIS_ALIGNED["feet-first"], seed=1)
    pipeline = _pipeline()
    fused = preprocess(pipeline, {"image": image})
    result = pipeline.inverse(fused)["image"]
    reference = pipeline.inverse(pipeline({"image": image.clone()}))["image"]
    assert result.shape == reference.shape == (1, 23, 40, 37)
    assert torch.equal(result.affine, reference.affine)
    assert float((result - reference).abs().max()) <= MONAI_FLOAT32_TOLERANCE


@pytest.mark.parametrize(
    "pipeline",
    [
        _pipeline(mode="nearest"),
        _pipeline(dtype=torch.float64),
    ],
    ids=["nearest", "float64"],
)
def test_what_it_cannot_reproduce_is_left_to_monai(pipeline: Compose) -> None:
    image = _image(AXIS_ALIGNED["head-first"])
    assert fused_resampling(list(pipeline.transforms), {"image": image}) is None
    result = preprocess(pipeline, {"image": image})["image"]
    reference = pipeline({"image": image.clone()})["image"]
    assert torch.equal(result.as_tensor(), reference.as_tensor())


def test_two_resamplings_are_not_fused_into_one() -> None:
    """Two interpolations are not one: the first runs in MONAI, the second (alone) is fused."""
    image = _image(AXIS_ALIGNED["head-first"])
    pipeline = Compose([Spacingd(keys="image", pixdim=(1.5, 1.3, 2.0), mode="bilinear", dtype=torch.float32),
                        Spacingd(keys="image", pixdim=(1.0, 1.0, 1.0), mode="bilinear", dtype=torch.float32)])
    assert fused_resampling(list(pipeline.transforms), {"image": image}) is None
    result = preprocess(pipeline, {"image": image})["image"]
    reference = pipeline({"image": image.clone()})["image"]
    assert torch.equal(result.affine, reference.affine)
    assert float((result - reference).abs().max()) <= MONAI_FLOAT32_TOLERANCE


def test_oblique_volume_is_left_to_monai() -> None:
    angle = 0.3
    oblique = np.array([[0.0, 0.0, -0.7, 120.0], [0.0, 0.8 * np.cos(angle), 0.0, -80.0],
                        [-2.5, 0.8 * np.sin(angle), 0.0, 40.0], [0.0, 0.0, 0.0, 1.0]])
    image = _image(oblique)
    pipeline = _pipeline()
    assert fused_resampling(list(pipeline.transforms), {"image": image}) is None
    result = preprocess(pipeline, {"image": image})["image"]
    reference = pipeline({"image": image.clone()})["image"]
    assert torch.equal(result.affine, reference.affine)
    assert float((result - reference).abs().max()) == 0.0
