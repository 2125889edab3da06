"""Shared helpers: timing, the synthetic CT series on disk, and the stand-in networks and bundle.

No trained bundle is required: when ``models/<name>`` bundles are absent, MONAI networks of a similar size
with random weights stand in (speed does not depend on the weights' values).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.bundle import write_bundle

OUT = Path(__file__).resolve().parent / "out"


@dataclass
class Timing:
    best_s: float
    median_s: float
    runs: int

    def as_dict(self) -> dict[str, float | int]:
        return {"best_s": round(self.best_s, 5), "median_s": round(self.median_s, 5), "runs": self.runs}


def timed(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; best and median wall time."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Timing(min(times), statistics.median(times), len(times))


def ct_phantom(slices: int, size: int, seed: int = 0) -> np.ndarray:
    """A chest-like HU volume [k, j, i]: air, a soft-tissue ellipse, lungs and a few bright nodules."""
    rng = np.random.default_rng(seed)
    j, i = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    body = (i / 0.42) ** 2 + (j / 0.32) ** 2 <= 1
    lungs = ((np.abs(i) - 0.17) / 0.12) ** 2 + (j / 0.2) ** 2 <= 1
    slab = np.where(body, 40.0, -1000.0).astype(np.float32)
    slab[lungs] = -850.0
    volume = np.repeat(slab[None], slices, axis=0)
    for _ in range(4):
        k0, j0, i0 = rng.integers(
            [slices // 4, size // 3, size // 4], [3 * slices // 4, 2 * size // 3, 3 * size // 4]
        )
        r = max(2, size // 60)
        volume[max(0, k0 - r) : k0 + r, j0 - r : j0 + r, i0 - r : i0 + r] = 60.0
    volume += rng.normal(0, 8, size=(1, size, size)).astype(np.float32)
    return volume


def ct_series(slices: int, size: int) -> list[Path]:
    """Paths of a synthetic CT series (cached under benchmarks/out/data; written once per shape)."""
    from dicom_io.synthetic import write_ct_series

    folder = OUT / "data" / f"ct_{slices}x{size}x{size}"
    done = folder.with_suffix(".json")  # outside the folder: monai reads every file in it
    if done.is_file():
        return [folder / name for name in json.loads(done.read_text())]
    for stale in folder.glob("*.dcm"):
        stale.unlink()
    spacing = (1.25, 0.7 * 512 / size, 0.7 * 512 / size)
    paths = write_ct_series(
        ct_phantom(slices, size), folder, spacing=spacing, origin=(-179.0, -179.0, -300.0)
    )
    done.write_text(json.dumps([p.name for p in paths]))
    return paths


def unet3d(small: bool = False) -> torch.nn.Module:
    """A MONAI 3D UNet of the size of a CT nodule/organ segmentation net (~1.2 M parameters)."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    channels = (8, 16, 32, 64) if small else (16, 32, 64, 128)
    return UNet(
        spatial_dims=3, in_channels=1, out_channels=2, channels=channels, strides=(2, 2, 2), num_res_units=2
    ).eval()


def densenet2d() -> torch.nn.Module:
    """MONAI DenseNet121 (2D, 1 channel, 1 output): the size of a bone-age regressor (~7 M parameters)."""
    from monai.networks.nets import DenseNet121

    torch.manual_seed(0)
    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=1).eval()


def write_ct_bundle(root: Path, *, small: bool, roi: int) -> Path:
    """A zoo-style CT segmentation bundle (spleen_ct_segmentation's transforms) with a random-weight UNet."""
    path = root / "bench_ct"
    channels = [8, 16, 32, 64] if small else [16, 32, 64, 128]
    inference = {
        "network_def": {
            "_target_": "UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 2,
            "channels": channels,
            "strides": [2, 2, 2],
            "num_res_units": 2,
        },
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image", "reader": "PydicomReader"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -57,
                    "a_max": 164,
                    "b_min": 0,
                    "b_max": 1,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": [roi, roi, roi],
            "sw_batch_size": 4,
            "overlap": 0.25,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            ],
        },
    }
    metadata = {
        "version": "0.0.1",
        "network_data_format": {
            "inputs": {"image": {"num_channels": 1, "spatial_shape": [roi, roi, roi]}},
            "outputs": {"pred": {"num_channels": 2, "channel_def": {"0": "background", "1": "nodule"}}},
        },
    }
    radinfer = {
        "task": "segmentation",
        "selection": {"modalities": ["CT"], "min_slices": 8, "dimensions": 3},
        "intended_use": "Benchmark stand-in with random weights; not a model.",
        "trained_on_synthetic_data": True,
    }
    torch.manual_seed(0)
    from monai.networks.nets import UNet

    net = UNet(
        spatial_dims=3, in_channels=1, out_channels=2, channels=channels, strides=(2, 2, 2), num_res_units=2
    )
    _favour_background(net)
    return write_bundle(path, metadata=metadata, inference=inference, radinfer=radinfer, state_dict=net.state_dict())


def _favour_background(net: torch.nn.Module) -> None:
    """Bias the last layer towards background, as a trained net is on most voxels: random weights would
    otherwise label half the volume as speckle and make the findings stage unrealistically slow."""
    last = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))][-1]
    with torch.no_grad():
        last.bias[0] += 4.0


def weights_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())
