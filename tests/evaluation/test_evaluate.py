"""End to end: synthetic CT cases through the clinical pipeline with a tiny real bundle, scored and reported."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import threading

import numpy as np
import pytest
from PIL import Image

from dicom_io.limits import Limits
from inference.engine import Engine
from inference.evaluation.evaluate import evaluate
from inference.evaluation.runner import CASES_FILE, PipelineAnalyzer, read_records
from inference.onnx_export import export_onnx_command
from inference.registry import Registry


@pytest.fixture(scope="module")
def engine(dataset):
    engine = Engine(Registry([dataset.models]), "cpu")
    engine.ensure_loaded(engine.registry.get("spheres"))
    return engine


@pytest.fixture(scope="module")
def bundle(engine):
    return engine.registry.get("spheres")


def _voxel_mm3(geometry) -> float:
    return float(np.prod(geometry.spacing))


@pytest.fixture(scope="module")
def segmentation_run(dataset, engine, bundle, geometry, tmp_path_factory):
    save_nifti = geometry.save_nifti
    labels = tmp_path_factory.mktemp("masks")
    by_id = {p.case_id: p for p in dataset.phantoms}
    for case_id in ("case01", "case02", "case03"):
        save_nifti(by_id[case_id].mask, labels / f"{case_id}.nii.gz")
    save_nifti(by_id["case04"].mask, labels / "case04.nii.gz", spacing=(2.5, 0.9, 1.6))  # wrong grid
    save_nifti(by_id["case01"].mask, labels / "ghost.nii.gz")  # no such case
    out = tmp_path_factory.mktemp("seg-out")
    analyzer = PipelineAnalyzer(engine, "spheres", Limits())
    metrics, paths = evaluate(bundle, analyzer, dataset.data, labels, out, workers=2)
    return metrics, paths, out


def test_segmentation_scores_cases_and_accounts_for_bad_labels(segmentation_run):
    metrics, _paths, out = segmentation_run
    records = {r["case_id"]: r for r in read_records(out)}
    assert records["case01"]["metrics"]["dice"] == {"1": pytest.approx(1.0)}
    assert records["case02"]["metrics"]["hd95"] == {"1": 0.0}
    assert records["case03"]["metrics"]["dice"] == {}  # no sphere, none found: no label to score
    assert records["case04"]["status"] == "label_error"
    account = {(a["kind"], a["case_id"]) for a in metrics["label_account"]}
    assert account == {("geometry_mismatch", "case04"), ("unknown_case", "ghost")}
    dice = metrics["metrics"]["per_label"]["1"]["dice"]
    assert dice["n"] == 2 and dice["mean"] == pytest.approx(1.0)
    assert metrics["counts"]["scored"] == 3


def test_metrics_json_pins_model_dataset_software_and_device(segmentation_run, bundle):
    _metrics, paths, out = segmentation_run
    stored = json.loads(paths["metrics_json"].read_text())
    assert stored["model"]["weights_sha256"] == bundle.weights_sha256
    assert stored["model"]["version"] == "0.3.0"
    assert len(stored["dataset"]["sha256"]) == 64 and stored["dataset"]["cases"] == 4
    assert stored["device"] == "cpu"
    assert {"radinfer", "monai", "torch", "python"} <= set(stored["software"])
    assert stored["model"]["runner"].startswith("torch") and stored["model"]["providers"] is None
    assert "onnxruntime" not in stored["software"]  # torch ran the model
    assert "synthetic phantoms" in stored["disclaimer"]
    assert stored["latency"]["n"] == 4 and stored["latency"]["p95_s"] > 0
    with open(paths["cases_csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case_id"] for r in rows] == ["case01", "case02", "case03", "case04"]
    assert rows[0]["dice_1"] == "1.0"
    assert {p.name for p in (out / "plots").iterdir()} == {"dice_histogram.png", "latency_histogram.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in (out / "plots").iterdir())


def _detection(bundle, engine, dataset, nodules, tmp_path):
    """The metrics of a detection evaluation against ``nodules`` (case id -> nodule entries), outputs in
    tmp_path/out."""
    labels = tmp_path / "nodules.json"
    labels.write_text(json.dumps({"cases": nodules}))
    metrics, _ = evaluate(
        bundle,
        PipelineAnalyzer(engine, "spheres", Limits()),
        dataset.data,
        labels,
        tmp_path / "out",
        overrides={"kind": "detection"},
    )
    return metrics


def test_detection_froc_end_to_end(dataset, engine, bundle, tmp_path):
    nodules = {
        p.case_id: [{"center_lps": list(p.center), "diameter_mm": 2 * p.radius}]
        for p in dataset.phantoms
        if p.center
    }
    nodules["case03"] = [
        {"center_lps": [0.0, 0.0, 80.0], "diameter_mm": 10.0}
    ]  # outside the scan: always missed
    metrics = _detection(bundle, engine, dataset, nodules, tmp_path)
    result = metrics["metrics"]
    assert (result["nodules"], result["detected_nodules"], result["false_positives"]) == (4, 3, 0)
    assert result["cpm"] == pytest.approx(0.75)
    assert (tmp_path / "out" / "plots" / "froc.png").is_file()


class Interrupting:
    """Analyses like the pipeline, but the call after ``after`` cases raises KeyboardInterrupt (Ctrl-C)."""

    def __init__(self, inner, after: int | None) -> None:
        self.inner, self.after, self.calls = inner, after, []
        self.lock = threading.Lock()

    def __call__(self, case, workdir):
        with self.lock:
            self.calls.append(case.case_id)
            if self.after is not None and len(self.calls) > self.after:
                raise KeyboardInterrupt
        return self.inner(case, workdir)


@pytest.fixture
def volume_labels(dataset, geometry, tmp_path):
    """Sphere volumes (mm3) as regression truth; case01's is 100 mm3 too high."""
    path = tmp_path / "volumes.csv"
    lines = ["case_id,value"] + [
        f"{p.case_id},{p.mask.sum() * _voxel_mm3(geometry) + (100 if p.case_id == 'case01' else 0)}"
        for p in dataset.phantoms
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


REGRESSION = {"kind": "regression", "prediction": "summary.sphere_volume_mm3", "within": 50.0}


def test_interrupted_evaluation_resumes_without_redoing_cases(
    dataset, engine, bundle, volume_labels, tmp_path
):
    out = tmp_path / "out"
    pipeline = PipelineAnalyzer(engine, "spheres", Limits())
    first = Interrupting(pipeline, after=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate(bundle, first, dataset.data, volume_labels, out, overrides=REGRESSION, workers=1)
    done = read_records(out)
    assert [r["case_id"] for r in done] == ["case01", "case02"]
    with open(out / CASES_FILE, "a") as fh:
        fh.write('{"case_id": "case03", "stat')  # torn line: the process died while writing

    second = Interrupting(pipeline, after=None)
    metrics, _ = evaluate(bundle, second, dataset.data, volume_labels, out, overrides=REGRESSION, workers=1)

    assert second.calls == ["case03", "case04"]
    records = read_records(out)
    assert [r["case_id"] for r in records] == ["case01", "case02", "case03", "case04"]
    assert records[:2] == done  # earlier results kept as they were
    result = metrics["metrics"]
    assert result["mae"] == pytest.approx(25.0, abs=1e-3)
    assert result["bias"] == pytest.approx(-25.0, abs=1e-3)
    assert result["share_within"] == 0.75


def test_resume_refuses_other_case_options_but_recomputes_aggregates(
    dataset, engine, bundle, volume_labels, tmp_path
):
    analyzer = Interrupting(PipelineAnalyzer(engine, "spheres", Limits()), after=None)
    evaluate(bundle, analyzer, dataset.data, volume_labels, tmp_path, overrides=REGRESSION, workers=1)
    metrics, _ = evaluate(
        bundle,
        analyzer,
        dataset.data,
        volume_labels,
        tmp_path,
        overrides={**REGRESSION, "within": 200.0},
    )
    assert len(analyzer.calls) == 4  # nothing ran again
    assert metrics["metrics"]["share_within"] == 1.0  # case01's 100 mm3 error is now within
    with pytest.raises(ValueError, match="different spec"):
        evaluate(
            bundle,
            analyzer,
            dataset.data,
            volume_labels,
            tmp_path,
            overrides={**REGRESSION, "prediction": "summary.sphere_components"},
        )


def test_labels_of_the_wrong_format_for_the_task(dataset, bundle, engine, volume_labels, tmp_path):
    with pytest.raises(ValueError, match="segmentation evaluation needs a folder of masks"):
        evaluate(
            bundle,
            PipelineAnalyzer(engine, "spheres", Limits()),
            dataset.data,
            volume_labels,
            tmp_path,
        )


def test_affine_matches_synthetic_series(dataset, geometry):
    from dicom_io.reader import read_headers
    from dicom_io.volume import build_volume

    paths = sorted((dataset.data / "case01").rglob("*.dcm"))
    volume = build_volume(read_headers(paths, Limits()).series[0], Limits())
    np.testing.assert_allclose(volume.affine, geometry.affine(), atol=1e-6)


def _chromium(*args: str, tmp_path) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_html_report_renders_its_plots_in_headless_chromium(segmentation_run, tmp_path):
    _metrics, paths, _out = segmentation_run
    html = paths["report_html"]
    assert "http://" not in html.read_text() and "https://" not in html.read_text()  # self-contained
    dom = _chromium("--dump-dom", html.as_uri(), tmp_path=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-plots="ok"' in dom.stdout  # every <img> loaded and decoded (naturalWidth > 0)
    assert dom.stdout.count("data:image/png;base64,") == 2
    assert 'id="synthetic-disclaimer"' in dom.stdout
    shot = tmp_path / "report.png"
    done = _chromium(f"--screenshot={shot}", "--window-size=1200,1600", html.as_uri(), tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10  # not a blank page


def test_multiclass_end_to_end_on_component_counts(dataset, engine, bundle, tmp_path):
    labels = tmp_path / "counts.csv"
    labels.write_text(
        "case_id,class\ncase01,1\ncase02,1\ncase03,0\ncase04,2\n"
    )  # case04 has one sphere, not 2
    metrics, paths = evaluate(
        bundle,
        PipelineAnalyzer(engine, "spheres", Limits()),
        dataset.data,
        labels,
        tmp_path / "out",
        overrides={"kind": "multiclass", "prediction": "summary.sphere_components"},
    )
    result = metrics["metrics"]
    assert result["classes"] == ["0", "1", "2"]
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["confusion_matrix"] == [[1, 0, 0], [0, 2, 0], [0, 1, 0]]
    assert "quadratic-weighted kappa" in paths["report_html"].read_text()


def test_classification_end_to_end_on_sphere_presence(dataset, engine, bundle, tmp_path):
    labels = tmp_path / "presence.csv"
    labels.write_text("case_id,label\ncase01,1\ncase02,1\ncase03,0\ncase04,1\n")
    metrics, _paths = evaluate(
        bundle,
        PipelineAnalyzer(engine, "spheres", Limits()),
        dataset.data,
        labels,
        tmp_path / "out",
        overrides={"kind": "classification", "prediction": "max_confidence", "bootstrap_resamples": 200},
    )
    result = metrics["metrics"]
    assert (result["positives"], result["negatives"]) == (3, 1)
    assert result["auc"] == 1.0
    assert result["confusion_matrix"] == {"tn": 1, "fp": 0, "fn": 0, "tp": 3}
    assert (tmp_path / "out" / "plots" / "roc.png").is_file()


def test_detection_case_with_an_invalid_nodule_is_not_scored(dataset, engine, bundle, tmp_path):
    """case02's only nodule has a 2-number centre: scoring it as a scan without nodules would make its
    detection a false positive."""
    nodules = {
        p.case_id: [{"center_lps": list(p.center), "diameter_mm": 2 * p.radius}] if p.center else []
        for p in dataset.phantoms
    }
    nodules["case02"][0]["center_lps"] = nodules["case02"][0]["center_lps"][:2]
    metrics = _detection(bundle, engine, dataset, nodules, tmp_path)
    result = metrics["metrics"]
    assert (result["scans"], result["nodules"], result["detected_nodules"], result["false_positives"]) == (
        3,
        2,
        2,
        0,
    )
    assert metrics["counts"] == {"evaluated": 3, "scored": 3, "invalid_value": 1}
    [entry] = metrics["label_account"]
    assert entry["case_id"] == "case02" and "center_lps needs 3 numbers" in entry["detail"]


class WithoutValue:
    """The pipeline's real report for each case, but case01's scored value is missing (None), as from a model
    that could not compute it."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, case, workdir):
        report, artifacts = self.inner(case, workdir)
        if case.case_id == "case01":
            report = report.model_copy(update={"summary": {**report.summary, "sphere_volume_mm3": None}})
        return report, artifacts


def test_a_report_without_the_value_is_a_model_failure_in_cases_csv_and_metrics(
    dataset, engine, bundle, volume_labels, tmp_path
):
    analyzer = WithoutValue(PipelineAnalyzer(engine, "spheres", Limits()))
    metrics, paths = evaluate(
        bundle, analyzer, dataset.data, volume_labels, tmp_path, overrides=REGRESSION, workers=1
    )
    assert metrics["counts"] == {"evaluated": 4, "scored": 3, "model_failure": 1}
    with open(paths["cases_csv"], newline="") as fh:
        rows = {r["case_id"]: r for r in csv.DictReader(fh)}
    assert rows["case01"]["status"] == "failed"  # as metrics.json files it: not a label error
    assert "sphere_volume_mm3 is None" in rows["case01"]["error"]
    assert metrics["latency"]["n"] == 4  # it ran to a report: its latency counts


def test_provenance_records_onnx_runtime_when_it_ran_the_model(dataset, geometry, volume_labels, tmp_path):
    import onnxruntime

    models = tmp_path / "models"
    geometry.write_bundle(models)
    export_onnx_command("spheres", [models])
    onnx_engine = Engine(Registry([models]), "cpu", runner="onnx")
    onnx_bundle = onnx_engine.registry.get("spheres")
    onnx_engine.ensure_loaded(onnx_bundle)
    analyzer = PipelineAnalyzer(onnx_engine, "spheres", Limits())
    metrics, paths = evaluate(
        onnx_bundle, analyzer, dataset.data, volume_labels, tmp_path / "out", overrides=REGRESSION, workers=1
    )
    assert metrics["model"]["runner"].startswith("onnx")
    assert metrics["model"]["providers"] == ["CPUExecutionProvider"]
    assert metrics["software"]["onnxruntime"] == onnxruntime.__version__
    assert metrics["counts"]["scored"] == 4
    html = paths["report_html"].read_text()
    assert "CPUExecutionProvider" in html and "onnxruntime" in html
