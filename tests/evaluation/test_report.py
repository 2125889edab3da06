"""Report outputs for classification and regression records (no pipeline needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inference.evaluation.labels import LabelIssue
from inference.evaluation.report import build_metrics, write_outputs
from inference.evaluation.runner import EvaluationSpec

MODEL = {
    "name": "m",
    "version": "1.0",
    "weights_sha256": "ab" * 32,
    "task": "t",
    "trained_on_synthetic_data": False,
}
DATASET = {"name": "d", "sha256": "cd" * 32, "cases": 41}
LABELS = {"file": "labels.csv", "sha256": "ef" * 32, "format": "table"}


def _outputs(tmp_path, spec, records, issues=()):
    metrics = build_metrics(
        spec,
        records,
        list(issues),
        model=MODEL,
        dataset=DATASET,
        labels=LABELS,
        device="cpu",
        throughput=(len(records), 20.0),
    )
    return metrics, write_outputs(tmp_path, metrics, records)


def test_classification_outputs_roc_and_account(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    scores = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 40), 0, 1)
    records = [
        {
            "case_id": f"c{i:02d}",
            "status": "ok",
            "report_status": "complete",
            "latency_s": 0.5 + i / 100,
            "truth": {"label": int(t)},
            "prediction": {"score": float(s)},
            "metrics": {},
        }
        for i, (t, s) in enumerate(zip(y, scores))
    ]
    records.append(
        {"case_id": "c99", "status": "failed", "latency_s": 0.1, "error": "InputRejected: not DICOM"}
    )
    spec = EvaluationSpec(kind="classification", prediction="summary.p", bootstrap_resamples=300)
    metrics, paths = _outputs(tmp_path, spec, records, [LabelIssue("missing_label", "c50", "no label")])
    assert metrics["counts"] == {"evaluated": 41, "scored": 40, "missing_label": 1, "model_failure": 1}
    assert metrics["latency"]["throughput_per_s"] == pytest.approx(41 / 20.0)
    assert metrics["latency"]["n"] == 40  # the failed case's 0.1 s is not a model latency
    assert {"roc", "latency_histogram"} <= {p.stem for p in (tmp_path / "plots").iterdir()}
    html = paths["report_html"].read_text()
    assert "AUC [95% bootstrap CI]" in html and "not DICOM" in html
    assert 'id="synthetic-disclaimer"' not in html  # the model is not flagged as synthetic-trained
    assert json.loads(paths["metrics_json"].read_text())["metrics"]["auc"] == pytest.approx(
        metrics["metrics"]["auc"]
    )


def test_regression_outputs_bland_altman(tmp_path):
    truth = np.linspace(12, 200, 30)
    records = [
        {
            "case_id": f"c{i:02d}",
            "status": "ok",
            "report_status": "complete",
            "latency_s": 1.0,
            "truth": {"value": float(t)},
            "prediction": {"value": float(t + (-1) ** i * 6)},
            "metrics": {"error": float((-1) ** i * 6)},
        }
        for i, t in enumerate(truth)
    ]
    spec = EvaluationSpec(
        kind="regression", prediction="summary.bone_age_months", within=12.0, bootstrap_resamples=300
    )
    metrics, paths = _outputs(tmp_path, spec, records)
    assert metrics["metrics"]["mae"] == pytest.approx(6.0)
    assert metrics["metrics"]["share_within"] == 1.0
    assert (tmp_path / "plots" / "bland_altman.png").is_file()
    assert "Bland-Altman 95% limits" in paths["report_html"].read_text()
    header, first, *_ = paths["cases_csv"].read_text().splitlines()
    assert header == "case_id,status,latency_s,truth,predicted,difference,error"
    truth, predicted, difference = (float(v) for v in first.split(",")[3:6])
    assert difference == pytest.approx(predicted - truth) and difference != 0  # not lost under the error column


def test_spec_defaults_from_task_then_bundle_then_caller():
    from inference.evaluation.runner import spec_for_bundle

    bone_age = spec_for_bundle({"evaluation": {"prediction": "summary.bone_age_months"}}, "bone_age")
    assert (bone_age.kind, bone_age.within) == ("regression", 12.0)
    assert spec_for_bundle({}, "lung_nodules").kind == "detection"
    override = spec_for_bundle(
        {"evaluation": {"prediction": "summary.p"}}, "mammography", threshold=0.3, within=None
    )
    assert (override.kind, override.threshold) == ("classification", 0.3)
    with pytest.raises(ValueError, match='"evaluation": {"prediction"'):
        spec_for_bundle({}, "mammography")


def test_discover_cases_and_dataset_hash(tmp_path):
    from inference.evaluation.runner import dataset_sha256, discover_cases

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "1.dcm").write_bytes(b"x")
    (tmp_path / "a.zip").write_bytes(b"zip")
    (tmp_path / "c.dcm").write_bytes(b"dcm")
    (tmp_path / "d").write_bytes(b"\0" * 128 + b"DICM" + b"dicom without suffix")
    (tmp_path / "README").write_text("not a case: no suffix and no DICOM header\n")
    (tmp_path / "labels.csv").write_text("case_id,value\n")
    (tmp_path / ".DS_Store").write_bytes(b"")
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["a", "b", "c", "d"]
    first = dataset_sha256(cases)
    (tmp_path / "b" / "1.dcm").write_bytes(b"y")
    assert dataset_sha256(discover_cases(tmp_path)) != first
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="occur twice"):
        discover_cases(tmp_path)
