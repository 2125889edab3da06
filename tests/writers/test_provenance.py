from __future__ import annotations

import pytest

from dicom_io.writers.provenance import ModelProvenance
from inference.findings import RESEARCH_USE_DISCLAIMER, SYNTHETIC_TRAINING_DISCLAIMER, ModelInfo


def _info(**overrides) -> ModelInfo:
    values = {
        "name": "bone_age_phantom",
        "version": "0.2.0",
        "weights_sha256": "0123456789abcdef" * 4,
        "task": "bone_age",
        "intended_use": "research",
        "trained_on_synthetic_data": True,
        "disclaimer": RESEARCH_USE_DISCLAIMER,
    }
    return ModelInfo(**(values | overrides))


def test_from_model_info_copies_fields_and_builds_equipment_values():
    provenance = ModelProvenance.from_model_info(_info())
    assert (provenance.name, provenance.version) == ("bone_age_phantom", "0.2.0")
    assert provenance.device_serial_number == "sha256:0123456789abcdef"
    assert provenance.software_versions[0] == "bone_age_phantom 0.2.0"
    assert provenance.software_versions[1].startswith("radinfer ")
    assert provenance.equipment_kwargs()["manufacturer"] == "radinfer"


@pytest.mark.parametrize(
    "synthetic, disclaimer, expected",
    [
        (True, RESEARCH_USE_DISCLAIMER, ["Not for clinical use", "synthetic"]),
        (False, RESEARCH_USE_DISCLAIMER, ["Not for clinical use"]),
        (True, "", ["synthetic"]),
    ],
    ids=["synthetic+disclaimer", "disclaimer-only", "synthetic-only"],
)
def test_statement_names_research_use_and_synthetic_training(synthetic, disclaimer, expected):
    statement = ModelProvenance.from_model_info(
        _info(trained_on_synthetic_data=synthetic, disclaimer=disclaimer)
    ).statement()
    assert all(text in statement for text in expected)
    assert ("synthetic" in statement) == synthetic


def test_statement_does_not_repeat_a_synthetic_training_disclaimer():
    info = _info(disclaimer=f"{RESEARCH_USE_DISCLAIMER} {SYNTHETIC_TRAINING_DISCLAIMER}")
    statement = ModelProvenance.from_model_info(info).statement()
    assert statement == info.disclaimer


def test_statement_empty_for_clinical_model_without_disclaimer():
    assert ModelProvenance("m", "1", "", trained_on_synthetic_data=False, disclaimer="").statement() == ""
