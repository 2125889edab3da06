"""The HTTP throughput benchmark's setup: the "off" bundle differs from the shipped one only in its batching."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from dicom_io.limits import Limits
from dicom_io.reader import read_headers
from inference.bundle import Bundle

# benchmarks/ is not an installed package: load the module from its file.
_SPEC = importlib.util.spec_from_file_location(
    "http_throughput", Path(__file__).resolve().parents[2] / "benchmarks" / "http_throughput.py"
)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)
BUNDLE, _models_dir, _radiograph = bench.BUNDLE, bench._models_dir, bench._radiograph


def test_batching_off_copy_changes_only_the_batching(tmp_path: Path) -> None:
    off = Bundle(_models_dir(tmp_path / "off", batching=False) / "bone_age")
    on = Bundle(_models_dir(tmp_path / "on", batching=True) / "bone_age")
    assert off.radinfer["batching"] == {"max_batch": 1, "max_wait_ms": 0}
    assert on.radinfer["batching"] == json.loads((BUNDLE / "configs" / "radinfer.json").read_text())["batching"]
    assert {k: v for k, v in off.radinfer.items() if k != "batching"} == {
        k: v for k, v in on.radinfer.items() if k != "batching"
    }
    assert off.weights_path.read_bytes() == on.weights_path.read_bytes()


def test_benchmark_radiograph_is_a_hand_dx_for_bone_age(tmp_path: Path) -> None:
    study = read_headers([_radiograph(tmp_path / "hand.dcm")], Limits())
    series = study.series[0]
    assert (series.modality, series.body_part) == ("DX", "HAND")
    assert str(series.first.PatientSex) == "M" and series.first.PatientBirthDate
