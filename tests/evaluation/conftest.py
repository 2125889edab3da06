"""A tiny but real bundle and a few synthetic CT cases with labels in every format.

The bundle's network is a 1x1x1 convolution whose stored weights threshold the windowed image at 0.5: on the
phantoms (-57 HU background, 164 HU spheres) it segments every sphere exactly, so expected metrics are known.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from api.config import Settings
from dicom_io.synthetic import write_ct_series
from inference.bundle import write_bundle as lay_out_bundle

SPACING = (2.5, 0.9, 0.8)  # (k, j, i) mm
ORIGIN = (-12.0, -14.0, -10.0)  # LPS of voxel (0, 0, 0)
SHAPE = (10, 30, 30)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

INFERENCE = {
    "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1},
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": -57,
                "a_max": 164,
                "b_min": 0,
                "b_max": 1,
                "clip": True,
            },
        ],
    },
    "inferer": {"_target_": "SimpleInferer"},
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        ],
    },
}
METADATA = {
    "version": "0.3.0",
    "name": "sphere segmenter",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [8, 8, 8]}}
    },
}
RADINFER = {
    "task": "segmentation",
    "selection": {"modalities": ["CT"], "min_slices": 4, "dimensions": 3},
    "intended_use": "Test bundle: segments bright spheres in synthetic CT.",
    "trained_on_synthetic_data": True,
    "labels": {"1": {"name": "sphere"}},
}


def write_bundle(root: Path, name: str = "spheres") -> Path:
    # foreground logit - background logit = 40 x - 20: positive exactly where the windowed value x > 0.5
    weights = {
        "weight": torch.tensor([-20.0, 20.0]).reshape(2, 1, 1, 1, 1),
        "bias": torch.tensor([10.0, -10.0]),
    }
    return lay_out_bundle(root / name, metadata=METADATA, inference=INFERENCE, radinfer=RADINFER, state_dict=weights)


def affine() -> np.ndarray:
    """(k, j, i) -> LPS of the synthetic series (axial: k along z, j along y, i along x)."""
    out = np.eye(4)
    out[:3, :3] = 0
    out[2, 0], out[1, 1], out[0, 2] = SPACING
    out[:3, 3] = ORIGIN
    return out


@dataclass
class Phantom:
    case_id: str
    center: tuple[float, float, float] | None
    radius: float
    mask: np.ndarray


def phantom(case_id: str, center, radius) -> Phantom:
    kji = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"), axis=-1).reshape(-1, 3)
    lps = kji @ affine()[:3, :3].T + affine()[:3, 3]
    inside = np.zeros(len(kji), bool) if center is None else np.linalg.norm(lps - center, axis=1) <= radius
    return Phantom(case_id, center, radius, inside.reshape(SHAPE).astype(np.int32))


PHANTOMS = [
    ("case01", (0.0, -2.0, 0.0), 6.0),
    ("case02", (3.0, 2.0, 2.0), 7.5),
    ("case03", None, 0.0),
    ("case04", (-2.0, 0.0, -1.0), 5.0),
]


def save_nifti(mask: np.ndarray, path: Path, spacing=SPACING) -> None:
    """As NIfTI tools store it: (i, j, k) array, RAS affine."""
    grid = affine()
    grid[:3, :3] = grid[:3, :3] / np.asarray(SPACING) * np.asarray(spacing)
    nib.save(
        nib.Nifti1Image(mask.transpose(2, 1, 0).astype(np.uint8), LPS_TO_RAS @ grid[:, [2, 1, 0, 3]]),
        str(path),
    )


@dataclass
class Dataset:
    root: Path
    data: Path
    models: Path
    phantoms: list[Phantom]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    """Four CT cases (one without a sphere) in data/, the bundle in models/."""
    root = tmp_path_factory.mktemp("evaluation")
    phantoms = [phantom(*spec) for spec in PHANTOMS]
    for p in phantoms:
        hu = np.where(p.mask > 0, 164, -57).astype(np.int16)
        write_ct_series(hu, root / "data" / p.case_id, spacing=SPACING, origin=ORIGIN)
    write_bundle(root / "models")
    return Dataset(root, root / "data", root / "models", phantoms)


@pytest.fixture(scope="session")
def geometry():
    """The helpers above for test modules (conftest is not importable under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(spacing=SPACING, affine=affine, save_nifti=save_nifti, write_bundle=write_bundle)


ADMIN, READER = "admin-key-0123456789abcdef", "read-key-0123456789abcdef"


def server_settings(dataset: Dataset, tmp_path: Path) -> Settings:
    """A server on ``tmp_path/server`` with the ``spheres`` bundle only, an admin and a read key, and evaluations
    allowed under the data set and ``tmp_path/labels``."""
    return Settings(
        data_dir=tmp_path / "server",
        models_dir=dataset.models,
        bundled_models=False,
        device="cpu",
        api_keys=f"admin:{ADMIN},read:{READER}",
        evaluation_roots=[dataset.root, tmp_path / "labels"],
    )
