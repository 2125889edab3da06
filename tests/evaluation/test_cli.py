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


def _evaluate(app, dataset, labels, out, *extra, regression=True):
    """``radinfer evaluate`` of the spheres on one worker; by default scoring their volumes (regression)."""
    scored = ["--kind", "regression", "--prediction", "summary.sphere_volume_mm3"] if regression else []
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
        *scored,
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


def test_evaluate_help_documents_label_formats_and_fits_80_columns(cli):
    app, _ = cli
    result = CliRunner().invoke(app, ["evaluate", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0
    text = result.output
    for option in ("--surface-tolerance-mm", "--retry-failed", "--no-keep-artifacts", "--strict"):
        assert option in text  # whole, not cut off with an ellipsis
    assert "…" not in text
    for rule in (
        "case_id",
        "value, label, class or target",
        '"center_lps": [x, y, z]',
        "diameter_mm",
        "box_lps",
        '"exclude": true',
        "center_rc",
        "<case id>.nii.gz",
    ):
        assert rule in text, rule
    assert max(len(line) for line in text.splitlines()) <= 80


def _labels(tmp_path, geometry, dataset, rows):
    voxel = float(np.prod(geometry.spacing))
    volume = {p.case_id: p.mask.sum() * voxel for p in dataset.phantoms}
    path = tmp_path / "problems.csv"
    path.write_text(
        "case_id,value\n"
        + "".join(f"{case},{volume.get(case, value) if value is None else value}\n" for case, value in rows)
    )
    return path


def test_label_problems_are_summarised_on_stderr_and_strict_exits_2_before_running(
    cli, dataset, geometry, tmp_path
):
    app, _ = cli
    # case01 and case02 labelled (case01 twice), case03 NaN, case04 "abc", plus an unknown case
    labels = _labels(
        tmp_path,
        geometry,
        dataset,
        [
            ("case01", None),
            ("case01", 1),
            ("case02", None),
            ("case03", "nan"),
            ("case04", "abc"),
            ("ghost", 3),
        ],
    )
    result = _evaluate(app, dataset, labels, tmp_path / "out")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("label account:")]
    assert lines == [
        "label account: duplicate: 1 (e.g. case01)",
        "label account: invalid_value: 2 (e.g. case03, case04)",
        "label account: unknown_case: 1 (e.g. ghost)",
    ]
    records = (tmp_path / "out" / "cases.jsonl").read_text()
    assert "case04" not in records  # a non-number is not run only to be dropped
    assert json.loads(result.stdout)["counts"]["scored"] == 2
    assert "label-summary" in (tmp_path / "out" / "report.html").read_text()

    strict = _evaluate(app, dataset, labels, tmp_path / "strict", "--strict")
    assert strict.exit_code == 2
    message = " ".join(strict.stderr.split())
    assert "strict" in message and "unknown_case: 1 (e.g. ghost)" in message
    assert not (tmp_path / "strict" / "cases.jsonl").exists()  # nothing was run

    clean = _labels(tmp_path, geometry, dataset, [(p.case_id, None) for p in dataset.phantoms])
    ok = _evaluate(app, dataset, clean, tmp_path / "clean", "--strict")
    assert ok.exit_code == 0, ok.output
    assert "label account" not in ok.stderr


def test_wrong_prediction_key_stops_at_the_first_case_with_the_available_keys(
    cli, dataset, volumes, tmp_path
):
    app, _ = cli
    out = tmp_path / "out"
    result = _evaluate(app, dataset, volumes, out, "--prediction", "summary.nope")
    assert result.exit_code == 2
    assert "summary.nope" in result.stderr and "sphere_volume_mm3" in result.stderr
    assert not (out / "cases.jsonl").exists() or not (out / "cases.jsonl").read_text().strip()
    fixed = _evaluate(app, dataset, volumes, out)  # the same --out, with the right key
    assert fixed.exit_code == 0, fixed.output
    assert json.loads(fixed.stdout)["counts"]["scored"] == 4


def test_strict_exits_2_for_label_problems_found_while_scoring(cli, dataset, geometry, tmp_path):
    app, _ = cli
    masks = tmp_path / "masks"
    masks.mkdir()
    for p in dataset.phantoms:  # case04's mask is on another grid: found only when it is scored
        geometry.save_nifti(
            p.mask,
            masks / f"{p.case_id}.nii.gz",
            **({"spacing": (2.5, 0.9, 1.6)} if p.case_id == "case04" else {}),
        )
    result = _evaluate(app, dataset, masks, tmp_path / "out", "--strict", regression=False)
    assert result.exit_code == 2, result.output
    assert "label account: geometry_mismatch: 1 (e.g. case04)" in result.stderr
    assert "--strict" in result.stderr
    assert json.loads(result.stdout)["counts"]["scored"] == 3  # the outputs are written all the same
