"""Fixtures for the lung nodule tests: the shipped bundle behind an engine, and a small phantom with known
nodules written as real multi-file DICOM."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from inference.engine import Engine
from inference.registry import Registry

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "lung_nodule"

# Nodules placed where every phantom of this shape has lung, away from the Lung-RADS size boundaries:
# solid 11 mm -> 4A, part-solid 13 mm with a 4 mm core -> 3, ground-glass 12 mm -> 2.
NODULES = [
    {"center_xyz": (-34.0, 0.0, 18.0), "diameter_mm": 11.0, "type": "solid", "category": "4A", "side": "right"},
    {"center_xyz": (35.0, 2.0, 0.0), "diameter_mm": 13.0, "type": "part-solid", "solid_fraction": 0.3,
     "category": "3", "side": "left"},
    {"center_xyz": (-32.0, 6.0, -10.0), "diameter_mm": 12.0, "type": "ground-glass", "category": "2",
     "side": "right"},
]
PHANTOM_SHAPE = (44, 192, 192)
PHANTOM_SPACING = (2.0, 0.75, 0.75)


def _phantom_module():
    """The bundle's generator, imported under a private name (the name ``scripts`` is reserved for bundles)."""
    spec = importlib.util.spec_from_file_location("lung_nodule_phantom", BUNDLE / "scripts" / "phantom.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def nodule_specs() -> list[dict]:
    return NODULES


@pytest.fixture(scope="session")
def lung_phantom():
    specs = [{k: v for k, v in n.items() if k not in ("category", "side")} | {
        "rotate": False, "elongation": 1.0, "lobulation": 0.0} for n in NODULES]
    return _phantom_module().generate_phantom(
        11, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING, nodules=specs, noise_sd=15.0
    )


@pytest.fixture(scope="session")
def lung_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    models = tmp_path_factory.mktemp("models")
    (models / BUNDLE.name).symlink_to(BUNDLE)
    engine = Engine(Registry([models]), "cpu")
    engine.load_all()
    return engine


@pytest.fixture(scope="session")
def write_phantom(lung_phantom, tmp_path_factory) -> Callable[..., list[Path]]:
    from dicom_io.synthetic import write_ct_series

    def write(name: str, **options) -> list[Path]:
        return write_ct_series(
            lung_phantom.hu, tmp_path_factory.mktemp(name), spacing=lung_phantom.spacing,
            origin=lung_phantom.origin, **options,
        )

    return write
