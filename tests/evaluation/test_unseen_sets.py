"""Label sets and data sets the evaluation had not met: negative scans, all cases failing, broken or odd
manifests, and how their problems reach the CLI, the API and the report."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.main import create_app
from dicom_io.errors import InputRejected
from dicom_io.limits import Limits
from inference.engine import Engine
from inference.evaluation.cli import EvalEnvironment, register
from inference.evaluation.evaluate import evaluate
from inference.evaluation.labels import load_labels
from inference.evaluation.metrics import Nodule, classification_metrics, match_candidates
from inference.evaluation.report import build_metrics, write_outputs
from inference.evaluation.runner import EvaluationSpec, PipelineAnalyzer
from inference.registry import Registry
from tests.conftest import StubBundle

from .conftest import ADMIN, server_settings


@pytest.fixture(scope="module")
def engine(dataset):
    engine = Engine(Registry([dataset.models]), "cpu")
    engine.ensure_loaded(engine.registry.get("spheres"))
    return engine


# --- detection: a scan without nodules --------------------------------------------------------------


def test_candidates_on_a_scan_without_nodules_are_false_positives():
    match = match_candidates([((1.0, 2.0, 3.0), 0.9), ((4.0, 5.0, 6.0), 0.2)], [])
    assert (match.tp_scores, match.fp_scores) == ([], [0.9, 0.2])
    assert match_candidates([], []).fp_scores == []
    hit = match_candidates([((0.0, 0.0, 0.0), 0.7)], [Nodule((0.0, 0.0, 1.0), 4.0)])
    assert (hit.tp_scores, hit.fp_scores) == ([0.7], [])


def test_detection_with_a_negative_scan_listed_as_empty(dataset, engine, tmp_path):
    """LUNA16-style sets list nodule-free scans with an empty list; that scan must be scored, not crash."""
    nodules = {
        p.case_id: [{"center_lps": list(p.center), "diameter_mm": 2 * p.radius}] if p.center else []
        for p in dataset.phantoms
    }
    labels = tmp_path / "nodules.json"
    labels.write_text(json.dumps({"cases": nodules}))
    metrics, _ = evaluate(
        engine.registry.get("spheres"),
        PipelineAnalyzer(engine, "spheres", Limits()),
        dataset.data,
        labels,
        tmp_path / "out",
        overrides={"kind": "detection"},
        workers=1,
    )
    result = metrics["metrics"]
    assert metrics["counts"]["scored"] == 4
    assert (result["scans"], result["nodules"], result["detected_nodules"]) == (4, 3, 3)
    assert result["cpm"] == pytest.approx(1.0)


# --- every case failing -----------------------------------------------------------------------------


def _failing(case, workdir):
    raise InputRejected(f"{case.case_id}: not a DICOM file")


BUNDLE = StubBundle(
    name="fake",
    version="0.0.1",
    weights_sha256="ab" * 32,
    radinfer={},
    task="mammography",
    trained_on_synthetic_data=True,
    intended_use="test",
    metadata={},
    device="cpu",
    runner=None,
)


def test_classification_with_every_case_failed_still_reports(tmp_path):
    assert classification_metrics([], [])["auc"] is None
    data = tmp_path / "data"
    for name in ("a", "b", "c"):
        (data / name).mkdir(parents=True)
        (data / name / "x.dcm").write_bytes(b"not dicom")
    labels = tmp_path / "labels.csv"
    labels.write_text("case_id,label\na,1\nb,0\nc,0\n")
    metrics, paths = evaluate(
        BUNDLE,
        _failing,
        data,
        labels,
        tmp_path / "out",
        overrides={"prediction": "summary.p", "bootstrap_resamples": 50},
    )
    assert metrics["counts"] == {"evaluated": 3, "scored": 0, "model_failure": 3}
    assert metrics["metrics"]["n"] == 0 and metrics["metrics"]["auc"] is None
    html = paths["report_html"].read_text()
    assert "not a DICOM file" in html and 'id="synthetic-disclaimer"' in html


# --- manifests: clear errors and accounted problems -------------------------------------------------


def test_csv_with_a_huge_field_or_not_utf8_is_a_clear_value_error(tmp_path):
    huge = tmp_path / "huge.csv"
    huge.write_text("case_id,value\na,1\nb," + "9" * 200_000 + "\n")
    with pytest.raises(ValueError, match=r"huge\.csv is not a readable CSV"):
        load_labels(huge)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("case_id,value\ncasé,1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.csv is not UTF-8"):
        load_labels(latin)


def test_nodule_json_duplicate_case_ids_are_reported_and_the_first_used(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text(
        '{"cases": {"a": [{"center_lps": [0, 0, 0], "diameter_mm": 5}], "b": [], '
        '"a": [{"center_lps": [9, 9, 9], "diameter_mm": 5, "exclude": true}]}}'
    )
    labels = load_labels(path)
    assert [(i.kind, i.case_id) for i in labels.issues] == [("duplicate", "a")]
    assert labels.nodules == {"a": [Nodule((0.0, 0.0, 0.0), 5.0)], "b": []}
    plain = tmp_path / "plain.json"  # the mapping alone, objects nested as usual
    plain.write_text('{"a": [{"box_lps": [[0, 0, 0], [2, 4, 2]], "exclude": false}]}')
    assert load_labels(plain).nodules == {"a": [Nodule((1.0, 2.0, 1.0), 4.0)]}


@pytest.fixture
def cli(dataset):
    app = typer.Typer()

    def environment(device):
        return EvalEnvironment(models_dirs=[dataset.models], device="cpu", limits=Limits())

    register(app, environment)
    return app


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("huge.csv", "case_id,value\ncase01,1\ncase02," + "7" * 200_000 + "\n", "huge.csv is not a readable CSV"),
        ("list.json", "[1, 2]", '{"cases": {case_id: [nodules]}}'),
    ],
    ids=["huge-csv-line", "json-not-a-mapping"],
)
def test_bad_manifest_exits_2_with_the_whole_message(cli, dataset, tmp_path, name, content, message):
    labels = tmp_path / name
    labels.write_text(content)
    kind = "regression" if name.endswith(".csv") else "detection"
    result = CliRunner().invoke(
        cli,
        ["evaluate", "--model", "spheres", "--data", str(dataset.data), "--labels", str(labels)]
        + ["--out", str(tmp_path / "out"), "--kind", kind, "--prediction", "summary.sphere_volume_mm3"],
    )
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split()), result.stderr  # rich wraps lines; brackets kept


def test_http_bad_manifest_is_422_problem_json(dataset, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "volumes.csv").write_text("case_id,value\ncase01,1\n")
    settings = server_settings(dataset, tmp_path)
    body = {"model": "spheres", "data_dir": str(dataset.data), "labels": str(labels / "volumes.csv")}
    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        answer = client.post("/v1/evaluations", json=body, headers=headers)  # segmentation needs masks
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "folder of masks" in answer.json()["detail"]
        regression = {**body, "kind": "regression"}  # no prediction key in the request or the bundle
        answer = client.post("/v1/evaluations", json=regression, headers=headers)
        assert answer.status_code == 422 and "--prediction" in answer.json()["detail"]
        good = {**regression, "prediction": "summary.sphere_volume_mm3"}
        answer = client.post("/v1/evaluations", json=good, headers=headers)
        assert answer.status_code == 202, answer.text
        deadline = time.monotonic() + 60
        url = f"/v1/evaluations/{answer.json()['id']}"
        while (status := client.get(url, headers=headers).json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert status["state"] == "succeeded", status
        assert status["counts"]["scored"] == 1 and status["counts"]["missing_label"] == 3


# --- the report's per-case table --------------------------------------------------------------------


def test_html_per_case_values_match_cases_csv(tmp_path):
    """Figures recomputed from the report's table must match the metrics (4 significant digits did not)."""
    truth, predicted = [168.96, 32.1, 128.72], [160.79, 22.86, 129.88]
    records = [
        {
            "case_id": f"c{i}",
            "status": "ok",
            "report_status": "complete",
            "latency_s": 0.5,
            "truth": {"value": t},
            "prediction": {"value": p},
            "metrics": {"error": p - t},
        }
        for i, (t, p) in enumerate(zip(truth, predicted, strict=True))
    ]
    spec = EvaluationSpec(kind="regression", prediction="summary.x", bootstrap_resamples=50)
    metrics = build_metrics(
        spec,
        records,
        [],
        model={"name": "m", "version": "1", "weights_sha256": "ab" * 32, "task": "bone_age"},
        dataset={"name": "d", "sha256": "cd" * 32, "cases": 3},
        labels={"file": "l.csv", "sha256": "ef" * 32, "format": "table"},
        device="cpu",
        throughput=(3, 1.5),
    )
    html = write_outputs(tmp_path, metrics, records)["report_html"].read_text()
    table = html[html.index("<h2>Per case</h2>") :]
    cells = [re.findall(r"<td>([^<]*)</td>", row) for row in table.split("<tr>")[2:]]
    shown_truth = np.array([float(c[3]) for c in cells])
    shown_pred = np.array([float(c[4]) for c in cells])
    assert shown_truth.tolist() == truth
    assert float(np.abs(shown_pred - shown_truth).mean()) == pytest.approx(metrics["metrics"]["mae"])


def test_an_invalid_label_is_one_problem_not_also_a_missing_label(tmp_path):
    """case b (NaN) and c (empty) have a label line: they are invalid, not missing, so the label account
    counts each unscored case once and missing + invalid + scored add up to the data set."""
    path = tmp_path / "labels.csv"
    path.write_text("case_id,value\na,1\nb,nan\nc,\n")
    labels = load_labels(path)
    issues = labels.issues + labels.reconcile(["a", "b", "c", "d"])
    assert sorted((i.kind, i.case_id) for i in issues) == [
        ("invalid_value", "b"),
        ("invalid_value", "c"),
        ("missing_label", "d"),
    ]


def test_case_ids_differing_only_in_unsafe_characters_keep_their_own_artifacts(dataset, engine, tmp_path):
    """"case 1" and "case_1" once shared OUT/cases/case_1: the second case wiped the first one's artifacts
    (and, on two workers, could read the other case's mask)."""
    import shutil

    data = tmp_path / "data ü"
    shutil.copytree(dataset.data / "case01", data / "case 1")
    shutil.copytree(dataset.data / "case02", data / "case_1")
    labels = tmp_path / "presence.csv"
    labels.write_text("case_id,label\ncase 1,1\ncase_1,1\n")
    out = tmp_path / "out"
    metrics, _ = evaluate(
        engine.registry.get("spheres"),
        PipelineAnalyzer(engine, "spheres", Limits()),
        data,
        labels,
        out,
        overrides={"kind": "classification", "prediction": "max_confidence", "bootstrap_resamples": 20},
        workers=1,
    )
    assert metrics["counts"]["scored"] == 2
    folders = sorted(p.name for p in (out / "cases").iterdir())
    assert len(folders) == 2 and "case_1" in folders
    assert all(any((out / "cases" / f).iterdir()) for f in folders)
