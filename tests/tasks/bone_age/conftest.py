"""Fixtures for the bone-age tests: the shipped bundle loaded once, and phantom radiographs as DICOM files."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dicom_io.synthetic import write_projection_image
from inference.engine import Engine
from inference.registry import Registry

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "bone_age"
sys.path.insert(0, str(BUNDLE))
from scripts.phantom import hand_scale, render, sample_params

sys.path.remove(str(BUNDLE))
for _name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
    del sys.modules[_name]  # the bundle loader imports its own ``scripts`` package

STUDY_DATE = dt.date(2024, 6, 15)


@pytest.fixture(scope="session")
def engine() -> Engine:
    engine = Engine(Registry([BUNDLE]), "cpu")
    engine.load_all()
    return engine


@pytest.fixture(scope="session")
def card_mae_months() -> float:
    """The held-out MAE the model card states (docs/evaluation.json, written by scripts/evaluate.py)."""
    return float(json.loads((BUNDLE / "docs" / "evaluation.json").read_text())["mae_months"])


def birth_date(age_months: float) -> str:
    return (STUDY_DATE - dt.timedelta(days=round(age_months * 365.2425 / 12))).strftime("%Y%m%d")


def write_phantom(path: Path, *, seed: int, sex: str = "M", bone_age_months: float = 120.0, size: int = 320,
                  photometric: str = "MONOCHROME2", modality: str = "DX", tags: dict[str, Any] | None = None,
                  chronological_age_months: float | None = None) -> tuple[Path, Any]:
    """A phantom hand radiograph as DICOM; tags default to a complete, well-formed bone-age request."""
    rng = np.random.default_rng(seed)
    params = sample_params(rng, sex=sex, bone_age_months=bone_age_months)
    image = render(params, size, rng)
    ca = params.chronological_age_months if chronological_age_months is None else chronological_age_months
    fov_mm = hand_scale(params) * 250.0 * params.fov_factor
    defaults = {"PatientSex": sex, "PatientBirthDate": birth_date(ca), "StudyDate": STUDY_DATE.strftime("%Y%m%d"),
                "BodyPartExamined": "HAND", "ViewPosition": "PA", "ImageLaterality": params.laterality}
    defaults.update(tags or {})
    written = write_projection_image(image * 4095.0, path, modality=modality, photometric=photometric,
                                     pixel_spacing=(fov_mm / size, fov_mm / size),
                                     tags={k: v for k, v in defaults.items() if v is not None})
    return written, params
