"""One evaluation from start to finish, shared by ``radinfer evaluate`` and ``POST /v1/evaluations``."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from inference.engine import model_info
from inference.evaluation.labels import LabelSet, load_labels
from inference.evaluation.report import account_summary, build_metrics, write_outputs
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
from inference.runners import session_providers

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
    if spec.kind == "regression":
        labels.keep_numbers()
        if value_range := regression_output(bundle).get("value_range"):
            labels.flag_implausible(*value_range, "the output range declared in the model's metadata.json")
    return cases, labels, spec


def regression_output(bundle: Any) -> dict[str, Any]:
    """The one regression output declared by the bundle's metadata.json (network_data_format.outputs): its
    ``quantity`` (channel name, e.g. "bone age (months)"), ``unit`` (the name's parenthesised end) and
    ``value_range``, each only where declared; {} without exactly one regression output."""
    outputs = bundle.metadata.get("network_data_format", {}).get("outputs", {})
    declared = [o for o in outputs.values() if isinstance(o, dict) and o.get("type") == "regression"]
    if len(declared) != 1:
        return {}
    out: dict[str, Any] = {}
    channels = declared[0].get("channel_def") or {}
    if len(channels) == 1 and isinstance(quantity := next(iter(channels.values())), str):
        out["quantity"] = quantity
        if unit := re.search(r"\(([^()]+)\)\s*$", quantity):
            out["unit"] = unit.group(1)
    bounds = declared[0].get("value_range")
    if (
        isinstance(bounds, list)
        and len(bounds) == 2
        and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        and bounds[0] < bounds[1]
    ):
        out["value_range"] = [float(b) for b in bounds]
    return out


def evaluate(
    bundle: Any,
    analyzer: Analyzer,
    data_dir: Path,
    labels_path: Path,
    out_dir: Path,
    *,
    overrides: dict[str, Any] | None = None,
    workers: int = 2,
    retry_failed: bool = False,
    keep_artifacts: bool = True,
    strict: bool = False,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate the loaded ``bundle`` on ``data_dir`` against ``labels_path``; write outputs to ``out_dir``.

    Returns the metrics document and the paths written. Raises ValueError/FileNotFoundError for unusable
    inputs (one sentence naming the problem), and with ``strict`` for any problem of the label file, before a
    case runs; otherwise per-case problems go to the metrics' label account.
    """
    if bundle.weights_sha256 is None:
        raise ValueError(
            f"Bundle {bundle.name!r} is not loaded; load it (Engine.ensure_loaded) before evaluating."
        )
    cases, labels, spec = check_inputs(bundle, data_dir, labels_path, overrides)
    issues = list(labels.issues) + labels.reconcile([c.case_id for c in cases])
    if spec.kind == "classification":
        issues += labels.binary_classes(spec.positive)[1]
    if strict and issues:
        summary = "; ".join(account_summary([i.as_dict() for i in issues]))
        raise ValueError(f"The labels have problems (strict mode; nothing was run): {summary}.")
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
    ran = model_info(bundle)  # as the served reports describe the model, runner and device
    model = ran.model_dump(exclude={"disclaimer", "device"})  # metrics.json has its own
    model["providers"] = session_providers(bundle.runner)
    if spec.kind == "regression":
        model["output"] = regression_output(bundle)
    metrics = build_metrics(
        spec,
        records,
        issues,
        model=model,
        dataset={"name": Path(data_dir).name, "sha256": info.dataset_sha256, "cases": len(cases)},
        labels={"file": Path(labels_path).name, "sha256": info.labels_sha256, "format": labels.format},
        device=ran.device or "",
        throughput=session_throughput(out_dir),
    )
    return metrics, write_outputs(out_dir, metrics, records)
