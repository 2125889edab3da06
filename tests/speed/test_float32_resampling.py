"""Preprocessing speed paths: resampling in float32 unless the bundle asks for a dtype (close to float64), no
write into the volume it shares, the blocked contiguous copy (same values and meta as ``Tensor.contiguous``)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose

from inference.tasks.segmentation import contiguous, float32_resampling, preprocess

ORIENT = {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"}
SPACING = {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.3, 2.0], "mode": "bilinear"}
HU_TOLERANCE = 0.03
"""Largest |float32 - float64| allowed, in HU: 1e-5 of the value range (-1000..2000 HU of uniform noise, the
worst case: float32 grid coordinates are off by ~1e-6 voxel, times neighbour differences of up to 3000 HU)."""


def _preprocessing(*transforms: dict[str, Any]) -> tuple[Compose, dict[str, Any]]:
    config = {"_target_": "Compose", "transforms": list(transforms)}
    parser = ConfigParser({"preprocessing": config})
    return parser.get_parsed_content("preprocessing"), config


def _image(seed: int = 0) -> MetaTensor:
    """An oblique, feet-first CT-like volume (1, k, j, i) with HU-range values."""
    rng = np.random.default_rng(seed)
    values = torch.from_numpy(rng.uniform(-1000, 2000, (1, 23, 40, 37)).astype(np.float32))
    angle = 0.3
    affine = np.array([[0.0, 0.0, -0.7, 120.0],
                       [0.0, 0.8 * np.cos(angle), 0.0, -80.0],
                       [-2.5, 0.8 * np.sin(angle), 0.0, 40.0],
                       [0.0, 0.0, 0.0, 1.0]])
    return MetaTensor(values, affine=torch.as_tensor(affine, dtype=torch.float64))


def test_spacingd_without_dtype_runs_in_float32_and_stays_close_to_float64() -> None:
    preprocessing, config = _preprocessing(ORIENT, SPACING)
    fast = float32_resampling(preprocessing, config)
    assert fast is not preprocessing
    assert fast.transforms[1].dtype == (torch.float32,)
    assert preprocessing.transforms[1].dtype == (np.float64,)  # the bundle's shared transform is untouched
    reference = preprocessing({"image": _image()})["image"]
    result = fast({"image": _image()})["image"]
    assert result.dtype == torch.float32
    assert result.shape == reference.shape
    np.testing.assert_allclose(result.affine.numpy(), reference.affine.numpy(), atol=1e-9)
    assert float((result.float() - reference.float()).abs().max()) <= HU_TOLERANCE


def test_inverse_of_float32_resampling_matches_float64() -> None:
    """Invertd (the bundle's Compose.inverse) still undoes the float32 copy's operations."""
    preprocessing, config = _preprocessing(ORIENT, SPACING)
    fast = float32_resampling(preprocessing, config)
    reference = preprocessing.inverse(preprocessing({"image": _image(1)}))["image"]
    result = preprocessing.inverse(fast({"image": _image(1)}))["image"]
    assert result.shape == reference.shape == (1, 23, 40, 37)
    assert float((result.float() - reference.float()).abs().max()) <= HU_TOLERANCE


@pytest.mark.parametrize("dtype", ["$torch.float64", "$np.float64"], ids=["torch", "numpy"])
def test_spacingd_with_a_configured_dtype_is_left_alone(dtype: str) -> None:
    preprocessing, config = _preprocessing(ORIENT, SPACING | {"dtype": dtype})
    assert float32_resampling(preprocessing, config) is preprocessing


def test_preprocessing_that_does_not_line_up_with_its_config_is_left_alone() -> None:
    preprocessing, config = _preprocessing(ORIENT, SPACING)
    assert float32_resampling(preprocessing, {"transforms": [SPACING, ORIENT]}) is preprocessing
    assert float32_resampling(preprocessing, {"transforms": [ORIENT]}) is preprocessing
    assert float32_resampling(preprocessing, "@preprocessing") is preprocessing
    assert float32_resampling(preprocessing.transforms[1], config) is preprocessing.transforms[1]


@pytest.mark.parametrize(
    "transforms",
    [
        [{"_target_": "NormalizeIntensityd", "keys": "image"}],
        [{"_target_": "EnsureTyped", "keys": "image"}, {"_target_": "NormalizeIntensityd", "keys": "image"}],
        [ORIENT, SPACING, {"_target_": "NormalizeIntensityd", "keys": "image"}],
    ],
    ids=["in-place-first", "in-place-after-a-no-op", "zoo-pattern"],
)
def test_preprocess_never_writes_into_the_shared_volume(transforms: list[dict[str, Any]]) -> None:
    """The image shares the volume's memory (no up-front copy); in-place transforms must not reach it."""
    preprocessing, _ = _preprocessing(*transforms)
    image = _image(2)
    before = image.clone()
    result = preprocess(preprocessing, {"image": image})["image"]
    assert torch.equal(image.as_tensor(), before.as_tensor())
    assert result.untyped_storage().data_ptr() != image.untyped_storage().data_ptr()


@pytest.mark.parametrize("axes", list(itertools.permutations((1, 2, 3))), ids=str)
def test_contiguous_copy_equals_torch_contiguous_for_every_permutation(axes: tuple[int, ...]) -> None:
    image = _image(3)
    permuted = image.permute(0, *axes)
    result, reference = contiguous(permuted), permuted.contiguous()
    assert result.is_contiguous() and isinstance(result, MetaTensor)
    assert torch.equal(result.as_tensor(), reference.as_tensor())
    assert torch.equal(result.affine, reference.affine)
    assert result.applied_operations == reference.applied_operations
