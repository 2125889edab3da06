"""One evaluation from start to finish, shared by ``radinfer evaluate`` and ``POST /v1/evaluations``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from inference.evaluation.labels import LabelSet, load_labels
from inference.evaluation.report import build_metrics, write_outputs
from inference.evaluation.runner import (
    CASE_FIELDS,
    Analyzer,
    Case,
    EvaluationSpec,
    Progress,
    RunInfo,
    dataset_sha256,
    discover_cases,
    labels_sha256,
    run_cases,
    session_throughput,
    spec_for_bundle,
)

LABEL_FORMATS = {
    "classification": "table",
    "multiclass": "table",
    "regression": "table",
    "detection": "nodules",
    "segmentation": "masks",
}
_FORMAT_NAMES = {"table": "a CSV", "nodules": "a nodule JSON", "masks": "a folder of masks"}


def check_inputs(
    bundle: Any, data_dir: Path, labels_path: Path, overrides: dict[str, Any] | None = None
) -> tuple[list[Case], LabelSet, EvaluationSpec]:
    """The cases, labels and spec of an evaluation, or ValueError/FileNotFoundError naming what is unusable.

    Cheap (no model, no pixel data), so the server can answer a bad request at once instead of failing later.
    """
    cases = discover_cases(data_dir)
    labels = load_labels(labels_path)
    spec = spec_for_bundle(bundle.radinfer, bundle.task, **(overrides or {}))
    expected = LABEL_FORMATS[spec.kind]
    if labels.format != expected:
        raise ValueError(
            f"A {spec.kind} evaluation needs {_FORMAT_NAMES[expected]} as labels; "
            f"{Path(labels_path).name} is {_FORMAT_NAMES[labels.format]}."
        )
    if spec.kind == "classification":
        labels.binary_classes(spec.positive)  # raises LabelError (a ValueError) for unusable classes
    return cases, labels, spec


def evaluate(
    bundle: Any,
    device: str,
    analyzer: Analyzer,
    data_dir: Path,
    labels_path: Path,
    out_dir: Path,
    *,
    overrides: dict[str, Any] | None = None,
    workers: int = 2,
    retry_failed: bool = False,
    keep_artifacts: bool = True,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate the loaded ``bundle`` on ``data_dir`` against ``labels_path``; write outputs to ``out_dir``.

    Returns the metrics document and the paths written. Raises ValueError/FileNotFoundError for unusable
    inputs (one sentence naming the problem); per-case problems go to the metrics' label account instead.
    """
    if bundle.weights_sha256 is None:
        raise ValueError(
            f"Bundle {bundle.name!r} is not loaded; load it (Engine.ensure_loaded) before evaluating."
        )
    cases, labels, spec = check_inputs(bundle, data_dir, labels_path, overrides)
    issues = list(labels.issues) + labels.reconcile([c.case_id for c in cases])
    if spec.kind == "classification":
        issues += labels.binary_classes(spec.positive)[1]
    info = RunInfo(
        model=bundle.name,
        model_version=bundle.version,
        weights_sha256=bundle.weights_sha256,
        dataset_sha256=dataset_sha256(cases),
        labels_sha256=labels_sha256(Path(labels_path)),
        spec={k: v for k, v in asdict(spec).items() if k in CASE_FIELDS},
    )
    records, _wall = run_cases(
        cases,
        labels,
        spec,
        analyzer,
        out_dir,
        info,
        workers=workers,
        retry_failed=retry_failed,
        keep_artifacts=keep_artifacts,
        progress=progress,
    )
    metrics = build_metrics(
        spec,
        records,
        issues,
        model={
            "name": bundle.name,
            "version": bundle.version,
            "weights_sha256": bundle.weights_sha256,
            "task": bundle.task,
            "trained_on_synthetic_data": bundle.trained_on_synthetic_data,
            "intended_use": bundle.intended_use,
        },
        dataset={"name": Path(data_dir).name, "sha256": info.dataset_sha256, "cases": len(cases)},
        labels={"file": Path(labels_path).name, "sha256": info.labels_sha256, "format": labels.format},
        device=device,
        throughput=session_throughput(out_dir),
    )
    return metrics, write_outputs(out_dir, metrics, records)
