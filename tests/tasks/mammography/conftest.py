"""Fixtures for the mammography task tests: random-weight bundles and phantom screening studies as DICOM."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
from monai.networks.nets import ResNet
from pydicom.uid import generate_uid

from dicom_io.synthetic import write_projection_image
from inference.bundle import write_bundle
from inference.engine import Engine
from inference.registry import Registry

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "mammography"
sys.path.insert(0, str(BUNDLE))
from scripts.make_eval_set import write_study  # noqa: F401 - re-exported for the HTTP tests
from scripts.phantom import generate_view

sys.path.remove(str(BUNDLE))
for _name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
    del sys.modules[_name]  # the bundle loader imports its own ``scripts`` package

VIEWS = (("R", "CC"), ("R", "MLO"), ("L", "CC"), ("L", "MLO"))
SIZE = 96  # the fixture network's input size


def _resnet(channels: int, outputs: int) -> dict[str, Any]:
    return {"_target_": "ResNet", "block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [8, 16, 32, 64],
            "spatial_dims": 2, "n_input_channels": channels, "num_classes": outputs}


def write_test_bundle(root: Path, name: str = "mammo_test", *, suspicion_bias: float | None = None,
                      threshold: float = 0.5, density_only: bool = False, size: int = SIZE,
                      operating_point: bool = True) -> Path:
    """A random-weight MONAI ResNet bundle with the mammography contract (task, outputs, operating point).

    ``suspicion_bias`` sets the suspicion logit's bias (large positive: every image flagged; negative: none).
    ``density_only``: like the MONAI zoo breast density classifier, 3 input channels at ``size`` and 4 logits.
    """
    channels, outputs = (3, 4) if density_only else (1, 5)
    torch.manual_seed(0)
    net = ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[8, 16, 32, 64], spatial_dims=2,
                 n_input_channels=channels, num_classes=outputs)
    state = net.state_dict()
    if suspicion_bias is not None:
        state["fc.weight"][4] = state["fc.weight"][0]  # a row whose Grad-CAM at layer3 is not flat
        state["fc.bias"][4] = suspicion_bias
    inference = {
        "imports": ["$import torch"],
        "input_size": size,
        "network_def": _resnet(channels, outputs),
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": 0.5, "upper": 99.5,
             "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "Resized", "keys": "image", "spatial_size": "@input_size", "size_mode": "longest",
             "mode": "area"},
            {"_target_": "SpatialPadd", "keys": "image", "spatial_size": ["@input_size", "@input_size"]},
        ]},
        "inferer": {"_target_": "SimpleInferer"},
        "gradcam_layer": "layer3",
    }
    metadata = {"version": "0.0.1", "name": name, "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": channels, "spatial_shape": [size, size]}},
        "outputs": {"pred": {"type": "probabilities", "num_channels": outputs}}}}
    radinfer: dict[str, Any] = {
        "task": "mammography",
        "selection": {"modalities": ["MG"], "dimensions": 2},
        "intended_use": "Mammography task tests only.",
        "trained_on_synthetic_data": True,
        "input_size": [size, size],
        "outputs": {"density_logits": [0, 4]} if density_only else {"density_logits": [0, 4], "suspicion_logit": 4},
        "density_classes": ["A", "B", "C", "D"],
        "batching": {"max_batch": 8, "max_wait_ms": 10},
    }
    if density_only:
        radinfer["input_channels"] = 3
    elif operating_point:
        radinfer["operating_point"] = {"threshold": threshold, "sensitivity": 0.9, "specificity": 0.8,
                                       "measured_on": "test fixture (no measurement)"}
    return write_bundle(root / name, metadata=metadata, inference=inference, radinfer=radinfer,
                        state_dict=state, readme=f"# {name}\n\nRandom weights; trained on nothing.\n")


def load_engine(bundle: Path) -> Engine:
    engine = Engine(Registry([bundle]), "cpu")
    engine.load_all()
    assert engine.ready, engine.status()
    return engine


@pytest.fixture(scope="session")
def flag_all_engine(tmp_path_factory) -> Engine:
    """The suspicion logit's bias is +8 (random weights add about +-1): every image is flagged at 0.5."""
    return load_engine(write_test_bundle(tmp_path_factory.mktemp("bundles"), suspicion_bias=8.0))


@pytest.fixture(scope="session")
def flag_none_engine(tmp_path_factory) -> Engine:
    return load_engine(write_test_bundle(tmp_path_factory.mktemp("bundles"), suspicion_bias=-8.0))


def write_mammo_study(out_dir: Path, *, seed: int = 0, views: tuple[tuple[str, str], ...] = VIEWS,
                      size: int = 128, photometric: str = "MONOCHROME2", density: int = 1,
                      lesion: tuple[str, str] | None = None,
                      tags: dict[int, dict[str, Any]] | None = None,
                      pixels: dict[int, np.ndarray] | None = None) -> list[Path]:
    """Phantom MG views (scripts/phantom.py) of one woman as DICOM, one file per entry of ``views``.

    ``lesion`` (laterality, type) puts a lesion in that breast's views. ``tags`` and ``pixels`` by index in
    ``views`` override header values (None deletes the attribute) and the image.
    """
    rng = np.random.default_rng(seed)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for number, (laterality, view) in enumerate(views, start=1):
        kind = lesion[1] if lesion and lesion[0] == laterality else None
        phantom = generate_view(rng, density=density, view=view, laterality=laterality, lesion=kind, size=size)
        header = {"ViewPosition": view, "ImageLaterality": laterality,
                  "PatientOrientation": phantom.patient_orientation, "StudyInstanceUID": study_uid,
                  "SeriesInstanceUID": series_uid, "InstanceNumber": number, "PatientSex": "F",
                  **(tags or {}).get(number - 1, {})}
        image = (pixels or {}).get(number - 1, phantom.image)
        path = write_projection_image(image, out_dir / f"{number:02d}_{laterality}_{view}.dcm", modality="MG",
                                      photometric=photometric, pixel_spacing=(0.2, 0.2),
                                      tags={k: v for k, v in header.items() if v is not None})
        _delete_none(path, header)
        paths.append(path)
    return paths


def _delete_none(path: Path, header: dict[str, Any]) -> None:
    gone = [k for k, v in header.items() if v is None]
    if gone:
        ds = pydicom.dcmread(path)
        for keyword in gone:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(path)
