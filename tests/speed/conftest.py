"""Factories for the speed-path tests: tiny networks and bundles written to tmp_path, gated runners."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.networks.nets import UNet

from inference.bundle import write_bundle as lay_out_bundle

UNET_3D = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 1,
}


def tiny_unet(**overrides: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    params = {k: v for k, v in UNET_3D.items() if k != "_target_"} | overrides
    return UNet(**params).eval()


def write_bundle(root: Path, name: str = "tiny", *, radinfer: dict[str, Any] | None = None) -> Path:
    """A minimal bundle: tiny 3D UNet state_dict, 16^3 sliding window, no transforms."""
    metadata = {
        "version": "0.1.0",
        "network_data_format": {"inputs": {"image": {"num_channels": 1, "spatial_shape": [16, 16, 16]}}},
    }
    inference = {
        "network_def": UNET_3D,
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 4},
    }
    settings = {
        "task": "segmentation",
        "selection": {"modalities": ["CT"]},
        "intended_use": "Test bundle for the speed path.",
        "trained_on_synthetic_data": True,
    } | (radinfer or {})
    return lay_out_bundle(root / name, metadata=metadata, inference=inference, radinfer=settings,
                        state_dict=tiny_unet().state_dict())


class GatedRunner:
    """Runs ``fn`` but blocks every call until ``gate`` is set; records each batch's first-row tags."""

    name = "gated"
    device = torch.device("cpu")

    def __init__(self, fn=lambda x: x * 2.0) -> None:
        self.fn = fn
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[torch.Tensor] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        assert self.gate.wait(10), "test gate was never opened"
        self.batches.append(batch.clone())
        return self.fn(batch)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path
