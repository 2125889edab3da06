"""`radinfer evaluate` and `radinfer compare` as the main CLI will mount them (register on a Typer app)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from dicom_io.limits import Limits
from inference.evaluation.cli import EvalEnvironment, register


@pytest.fixture
def cli(dataset):
    app = typer.Typer()
    devices = []

    def environment(device):
        devices.append(device)
        return EvalEnvironment(models_dirs=[dataset.models], device=device or "cpu", limits=Limits())

    register(app, environment)
    return app, devices


@pytest.fixture
def volumes(dataset, geometry, tmp_path):
    voxel = float(np.prod(geometry.spacing))
    path = tmp_path / "volumes.csv"
    path.write_text(
        "case_id,value\n" + "".join(f"{p.case_id},{p.mask.sum() * voxel + 5}\n" for p in dataset.phantoms)
    )
    return path


def _evaluate(app, dataset, labels, out, *extra):
    args = [
        "evaluate",
        "--model",
        "spheres",
        "--data",
        str(dataset.data),
        "--labels",
        str(labels),
        "--out",
        str(out),
        "--kind",
        "regression",
        "--prediction",
        "summary.sphere_volume_mm3",
        "--workers",
        "1",
        *extra,
    ]
    return CliRunner().invoke(app, args)


def test_evaluate_command_writes_outputs_and_resumes(cli, dataset, volumes, tmp_path):
    app, devices = cli
    result = _evaluate(app, dataset, volumes, tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"]["scored"] == 4
    assert devices == ["cpu"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["metrics"]["bias"] == pytest.approx(-5.0, abs=1e-6)
    again = _evaluate(app, dataset, volumes, tmp_path / "out", "--device", "cpu")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["counts"] == metrics["counts"]


def test_evaluate_command_bad_input_exits_2(cli, dataset, volumes, tmp_path):
    app, _ = cli
    result = _evaluate(app, dataset, volumes, tmp_path / "out", "--positive", "x", "--kind", "segmentation")
    assert result.exit_code == 2
    assert "folder of masks" in result.stderr
    unknown = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            "nope",
            "--data",
            str(dataset.data),
            "--labels",
            str(volumes),
            "--out",
            str(tmp_path / "o2"),
        ],
    )
    assert unknown.exit_code == 2 and "nope" in unknown.stderr


def test_compare_command_on_two_runs_of_the_same_set(cli, dataset, volumes, tmp_path):
    app, _ = cli
    for name in ("a", "b"):
        assert _evaluate(app, dataset, volumes, tmp_path / name).exit_code == 0
    result = CliRunner().invoke(
        app,
        [
            "compare",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "--out",
            str(tmp_path / "cmp"),
            "--resamples",
            "200",
        ],
    )
    assert result.exit_code == 0, result.output
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert comparison["paired"] == 4
    assert comparison["mae"]["difference"] == 0.0  # same model, same cases
    assert comparison["mae"]["p_value"] == 1.0


def test_compare_with_stored_predictions_csv(cli, dataset, volumes, tmp_path):
    app, _ = cli
    assert _evaluate(app, dataset, volumes, tmp_path / "a").exit_code == 0
    rows = (tmp_path / "a" / "cases.csv").read_text().splitlines()
    stored = tmp_path / "stored.csv"
    stored.write_text(
        "case_id,predicted\n" + "".join(f"{r.split(',')[0]},0\n" for r in rows[1:])
    )  # predicts 0
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(stored), "--resamples", "200"])
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.stdout)
    assert comparison["b"] == {"predictions": "stored.csv"}
    assert comparison["mae"]["a"] == pytest.approx(5.0, abs=1e-6)
    assert comparison["mae"]["difference"] < 0  # model a is closer to the labels than constant 0
