"""Fixtures for the HTTP tests: keys per role, a tiny CT segmentation bundle, settings, a running app, studies."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from monai.networks.nets import UNet

from api.config import Settings
from api.main import create_app
from dicom_io.synthetic import write_ct_series
from inference.bundle import write_bundle

KEYS = {
    "admin": "admin-key-0123456789abcdef",
    "read": "read-key-0123456789abcdef",
    "submit": "submit-key-0123456789abcdef",
}
TINY_UNET = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}


def write_test_bundle(root: Path, name: str = "tiny_ct", *, roi: int = 16, overlap: float = 0.25) -> Path:
    """A real (random-init) MONAI bundle: CT routing, sliding-window tiny UNet, generic segmentation task.

    A large ``overlap`` multiplies the windows, so one job takes seconds on a CPU (for the crash test).
    """
    inference = {
        "imports": ["$import torch"],
        "network_def": TINY_UNET,
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 400,
                 "b_min": 0, "b_max": 1, "clip": True},
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [roi, roi, roi], "sw_batch_size": 1,
                    "overlap": overlap},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            ],
        },
    }
    metadata = {
        "version": "0.0.1",
        "name": name,
        "description": "Random-init test bundle for the API tests.",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [roi, roi, roi]}},
            "outputs": {"pred": {"type": "image", "num_channels": 2, "channel_def": {"0": "background", "1": "blob"}}},
        },
    }
    radinfer = {
        "task": "segmentation",
        "selection": {"modalities": ["CT"], "min_slices": 4, "dimensions": 3},
        "intended_use": "API tests only.",
        "trained_on_synthetic_data": True,
        "max_components_per_label": 5,
    }
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0)
    return write_bundle(root / name, metadata=metadata, inference=inference, radinfer=radinfer,
                        state_dict=net.state_dict(), readme=f"# {name}\n\nA random-init network; trained on nothing.\n")


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


def api_keys_setting() -> str:
    return ",".join(f"{role}:{key}" for role, key in KEYS.items())


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_test_bundle(root)
    return root


@pytest.fixture
def make_settings(tmp_path: Path, models_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "models_dir": models_dir,
            "bundled_models": False,
            "device": "cpu",
            "api_keys": api_keys_setting(),
        }
        values.update(overrides)
        return Settings(**values)

    return make


def wait_ready(client: TestClient, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.1)


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings())) as test_client:
        wait_ready(test_client)
        yield test_client


def ct_hu(slices: int = 8, size: int = 24) -> np.ndarray:
    """A small CT volume: air-like background and one bright cube."""
    hu = np.full((slices, size, size), -800.0, dtype=np.float32)
    hu[2:6, 8:16, 8:16] = 200.0
    return hu


@pytest.fixture
def ct_study(tmp_path: Path) -> Callable[..., list[Path]]:
    counter = iter(range(10_000))

    def make(slices: int = 8, size: int = 24, **kwargs: Any) -> list[Path]:
        out = tmp_path / f"study{next(counter)}"
        return write_ct_series(ct_hu(slices, size), out, **kwargs)

    return make


def multipart(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (p.name, p.read_bytes(), "application/dicom")) for p in paths]


def wait_finished(client: TestClient, job_id: str, role: str = "read", timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(role)).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
