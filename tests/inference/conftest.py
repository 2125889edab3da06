"""Factories for the inference tests: in-memory series and volumes, and bundles written to tmp_path."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_io.types import InstanceHeader, InstanceRef, Series, Volume
from inference.bundle import write_bundle as lay_out_bundle

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"

TINY_UNET = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}

# Modelled on the MONAI zoo's spleen_ct_segmentation configs/inference.json (smaller network and window).
ZOO_STYLE_INFERENCE = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "output_ext": ".nii.gz",
    "output_dtype": "$numpy.float32",
    "output_postfix": "trans",
    "separate_folder": True,
    "dataset_dir": "/workspace/data/Task09_Spleen",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network_def": TINY_UNET,
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
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
        "roi_size": [32, 32, 32],
        "sw_batch_size": 2,
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
            {
                "_target_": "SaveImaged",
                "keys": "pred",
                "output_dir": "@output_dir",
                "output_ext": "@output_ext",
                "output_dtype": "@output_dtype",
                "output_postfix": "@output_postfix",
                "separate_folder": "@separate_folder",
            },
        ],
    },
    "dataset": {
        "_target_": "Dataset",
        "data": "$[{'image': i} for i in @datalist]",
        "transform": "@preprocessing",
    },
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataset"},
}

METADATA = {
    "version": "0.1.0",
    "name": "test bundle",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [32, 32, 32]}},
        "outputs": {
            "pred": {"type": "image", "num_channels": 2, "channel_def": {"0": "background", "1": "spleen"}}
        },
    },
}

RADINFER = {
    "task": "segmentation",
    "selection": {"modalities": ["CT"], "min_slices": 8, "dimensions": 3},
    "intended_use": "Test bundle: segments a bright sphere in synthetic CT.",
    "trained_on_synthetic_data": True,
    "labels": {"1": {"name": "sphere", "code": {"value": "T-D0050", "scheme": "SRT", "meaning": "Tissue"}}},
}


def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0)


def write_bundle(
    root: Path,
    name: str,
    *,
    inference: dict[str, Any] | None = None,
    radinfer: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    weights: Any = "state_dict",
    scripts: dict[str, str] | None = None,
) -> Path:
    """Write a bundle. ``weights``: "state_dict", "wrapped", "torchscript", "pickled" or a state_dict."""
    path = lay_out_bundle(root / name, metadata=metadata or METADATA, inference=inference or ZOO_STYLE_INFERENCE,
                        radinfer=radinfer or RADINFER)
    if scripts:
        (path / "scripts").mkdir()
        (path / "scripts" / "__init__.py").write_text("")
        for module, source in scripts.items():
            (path / "scripts" / f"{module}.py").write_text(source)
    if isinstance(weights, dict):
        torch.save(weights, path / "models" / "model.pt")
    elif weights == "state_dict":
        torch.save(tiny_unet().state_dict(), path / "models" / "model.pt")
    elif weights == "wrapped":
        torch.save({"model": tiny_unet().state_dict(), "epoch": 3}, path / "models" / "model.pt")
    elif weights == "torchscript":
        torch.jit.script(tiny_unet()).save(str(path / "models" / "model.ts"))
    elif weights == "pickled":
        torch.save(tiny_unet(), path / "models" / "model.pt")
    return path


def make_series(
    modality: str = "CT",
    slices: int = 20,
    *,
    uid: str | None = None,
    body_part: str = "",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    sop_class: str | None = None,
    frames_per_instance: int = 1,
) -> Series:
    sop_class = sop_class or {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}.get(modality, DX_IMAGE_STORAGE)
    series_uid = uid or generate_uid()
    instances = []
    for n in range(slices):
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.Modality = modality
        ds.ImageType = list(image_type)
        if body_part:
            ds.BodyPartExamined = body_part
        if frames_per_instance > 1:
            ds.NumberOfFrames = frames_per_instance
        instances.append(InstanceHeader(path=Path(f"{n}.dcm"), dataset=ds))
    return Series(STUDY_UID, series_uid, modality, instances)


def make_volume(
    array: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (2.5, 0.9, 0.8),
    axes: tuple[tuple[float, float, float], ...] = ((0, 0, -1), (0, 1, 0), (1, 0, 0)),
    origin: tuple[float, float, float] = (-15.0, -20.0, 30.0),
) -> Volume:
    """A Volume whose (k, j, i) axes point along ``axes`` (LPS unit vectors) with ``spacing`` mm.

    The default stacks slices towards the feet (k along -z), so Orientationd must flip and transpose.
    """
    affine = np.eye(4)
    for column, (direction, step) in enumerate(zip(axes, spacing, strict=True)):
        affine[:3, column] = np.asarray(direction, dtype=float) * step
    affine[:3, 3] = origin
    series = make_series("CT", array.shape[0])
    refs = [InstanceRef(CT_IMAGE_STORAGE, h.sop_instance_uid) for h in series.instances]
    return Volume(array.astype(np.float32), affine, spacing, refs, series)


def sphere_volume(
    shape: tuple[int, int, int] = (20, 44, 40),
    center_lps: tuple[float, float, float] = (0.0, -2.0, 5.0),
    radius_mm: float = 9.0,
    **volume_args: Any,
) -> tuple[Volume, np.ndarray]:
    """A CT volume at -57 HU with a 164 HU sphere; returns (volume, true sphere mask).

    The values are the zoo-style ScaleIntensityRanged window, so after any linear resampling the 0.5 level of
    ``threshold_logits`` stays on the true surface.
    """
    empty = make_volume(np.zeros(shape), **volume_args)
    kji = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    distance = np.linalg.norm(empty.index_to_lps(kji) - np.asarray(center_lps), axis=1).reshape(shape)
    truth = distance <= radius_mm
    return make_volume(np.where(truth, 164.0, -57.0), **volume_args), truth


def threshold_logits(batch: torch.Tensor) -> torch.Tensor:
    """A 'perfect' two-class network for the sphere after ScaleIntensityRanged: foreground where x > 0.5."""
    foreground = (batch[:, :1] - 0.5) * 20.0
    return torch.cat([-foreground, foreground], dim=1)


@pytest.fixture
def kit(tmp_path: Path) -> SimpleNamespace:
    """The factories above; ``kit.bundle(name, **kwargs)`` writes a bundle under ``kit.models``."""
    models = tmp_path / "models"
    models.mkdir()

    def bundle(name: str = "seg", **kwargs: Any) -> Path:
        return write_bundle(models, name, **kwargs)

    def radinfer(**overrides: Any) -> dict[str, Any]:
        return {**copy.deepcopy(RADINFER), **overrides}

    def inference(**overrides: Any) -> dict[str, Any]:
        return {**copy.deepcopy(ZOO_STYLE_INFERENCE), **overrides}

    return SimpleNamespace(
        models=models,
        workdir=tmp_path,
        bundle=bundle,
        radinfer=radinfer,
        inference=inference,
        metadata=METADATA,
        tiny_unet=tiny_unet,
        make_series=make_series,
        make_volume=make_volume,
        sphere_volume=sphere_volume,
        threshold_logits=threshold_logits,
        study_uid=STUDY_UID,
    )
