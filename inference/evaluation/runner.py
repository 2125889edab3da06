"""Run every labelled case of a data set through the clinical pipeline and score it, resumably.

Each case is analysed exactly as a clinical request (``inference.pipeline.analyze`` with the Engine, or a
job at bulk priority in the server's job store), scored against its label at once, and appended as one line
to ``<out>/cases.jsonl`` (flushed and fsynced). A rerun on the same output folder skips the cases already
there, so an interrupted evaluation resumes where it stopped; ``run.json`` pins the model weights and the
data set so a rerun cannot mix results of different models or data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dicom_io.errors import InputRejected
from dicom_io.limits import Limits
from dicom_io.reader import is_part10
from inference.errors import InferenceError
from inference.evaluation.labels import MODEL_FAILURE, LabelError, LabelSet, align_mask, read_mask
from inference.evaluation.metrics import match_candidates, segmentation_case_metrics
from inference.findings import FindingsReport, ReportStatus
from inference.hashing import sha256_file

CASES_FILE = "cases.jsonl"
RUN_FILE = "run.json"
SESSIONS_FILE = "sessions.jsonl"
KINDS = ("classification", "multiclass", "regression", "detection", "segmentation")
# scored on the report value named by ``prediction``
VALUE_KINDS = ("classification", "multiclass", "regression")
# Evaluation defaults of each task; radinfer.json {"evaluation": {...}} and then the caller override them.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "segmentation": {"kind": "segmentation"},
    "lung_nodules": {"kind": "detection"},
    "mammography": {"kind": "classification"},
    "bone_age": {"kind": "regression", "within": 12.0},  # months
}
MASK_ARTIFACT = "mask.npz"


@dataclass(frozen=True)
class Case:
    """One study of the data set: ``case_id`` and the files, folder or zip given to the pipeline."""

    case_id: str
    inputs: tuple[Path, ...]


@dataclass
class EvaluationSpec:
    """What is compared with what. ``prediction``: where a classification score or regression value is read
    from a findings report: ``summary.<key>`` or ``max_confidence`` (highest finding confidence, 0 if none)."""

    kind: str
    prediction: str | None = None
    positive: str | None = None  # class name counted as positive (CSV labels that are not 0/1)
    threshold: float = 0.5
    within: float | None = None  # regression tolerance, e.g. 12 (months) for bone age
    surface_tolerance_mm: float = 2.0
    finding_label: str | None = None  # detection: only findings with this label are candidates
    bootstrap_resamples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Unknown evaluation kind {self.kind!r}; use one of {', '.join(KINDS)}.")
        if self.kind not in VALUE_KINDS:
            return
        if not self.prediction:
            raise ValueError(
                f"A {self.kind} evaluation needs to know which report value is the prediction: set "
                '"evaluation": {"prediction": "summary.<key>"} in the bundle\'s radinfer.json or pass --prediction.'
            )
        named = self.prediction.startswith("summary.") and len(self.prediction) > len("summary.")
        if not named and (self.kind == "multiclass" or self.prediction != "max_confidence"):
            allowed = "summary.<key>" if self.kind == "multiclass" else "summary.<key> or max_confidence"
            raise ValueError(f"Prediction {self.prediction!r} of a {self.kind} evaluation is not {allowed}.")


def spec_for_bundle(radinfer: dict[str, Any], task: str, **overrides: Any) -> EvaluationSpec:
    """The spec from the bundle's radinfer.json ``evaluation`` section and task, then ``overrides`` (not None)."""
    configured = {**TASK_DEFAULTS.get(task, {"kind": task}), **(radinfer.get("evaluation") or {})}
    configured.update({k: v for k, v in overrides.items() if v is not None})
    known = {f for f in EvaluationSpec.__dataclass_fields__}
    return EvaluationSpec(**{k: v for k, v in configured.items() if k in known})


# --- data set ---------------------------------------------------------------------------------------


def discover_cases(data_dir: Path) -> list[Case]:
    """Cases of ``data_dir``: each sub-folder, ``.zip`` or DICOM file (``.dcm``, or no suffix and a Part 10 header)
    directly in it.

    The case id is the entry's name without a ``.zip``/``.dcm`` suffix. Hidden entries and other files
    (e.g. a labels CSV kept beside the cases) are not cases.
    """
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(
            f"Data folder {data_dir} is a file, not a folder; pass a folder with one entry per case."
        )
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"Data folder {data_dir} does not exist; pass a folder with one entry per case."
        )
    cases = []
    for entry in sorted(data_dir.iterdir()):
        suffix = entry.suffix.lower()
        if entry.name.startswith(".") or (entry.is_file() and suffix not in (".zip", ".dcm", "")):
            continue
        if entry.is_file() and not suffix and not is_part10(entry):  # a README or LICENSE, not a case
            continue
        cases.append(Case(entry.name[: -len(suffix)] if entry.is_file() and suffix else entry.name, (entry,)))
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(
            f"Data folder {data_dir}: case id(s) {', '.join(duplicates)} occur twice "
            "(e.g. a folder and a zip of the same name); keep one entry per case."
        )
    if not cases:
        raise ValueError(f"Data folder {data_dir} has no case (sub-folder, zip or DICOM file).")
    return cases


def dataset_sha256(cases: list[Case]) -> str:
    """SHA-256 over the sorted case files: relative path and content hash of each, so renames count too."""
    digest = hashlib.sha256()
    for case in sorted(cases, key=lambda c: c.case_id):
        for root in case.inputs:
            files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
            for file in files:
                relative = file.relative_to(root.parent).as_posix()
                digest.update(f"{relative}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()




# --- analysers: how a case reaches the model --------------------------------------------------------


class Analyzer(Protocol):
    """Analyses one case; returns its findings report and the folder holding the report's artifacts."""

    def __call__(self, case: Case, workdir: Path) -> tuple[FindingsReport, Path]: ...


class PipelineAnalyzer:
    """In process: ``inference.pipeline.analyze`` with ``engine`` (the ``radinfer evaluate`` command)."""

    def __init__(self, engine: Any, model: str, limits: Limits) -> None:
        self.engine, self.model, self.limits = engine, model, limits

    def __call__(self, case: Case, workdir: Path) -> tuple[FindingsReport, Path]:
        from inference.batching import request_priority
        from inference.jobs.store import PRIORITY_BULK
        from inference.pipeline import analyze

        with request_priority(PRIORITY_BULK):  # a shared device queue serves interactive requests first
            report = analyze(
                list(case.inputs), self.engine, model=self.model, limits=self.limits, workdir=workdir
            )
        return report, workdir


class JobStoreAnalyzer:
    """On the server: each case becomes a job at bulk priority, run by the server's worker like any other.

    The case files are copied into the job's input (the data set is never moved); the job is deleted once the
    case is scored, as its result lives on in the evaluation.
    """

    def __init__(self, store: Any, files: Any, worker: Any, model: str, *, poll_s: float = 0.2) -> None:
        self.store, self.files, self.worker, self.model, self.poll_s = store, files, worker, model, poll_s

    def __call__(self, case: Case, workdir: Path) -> tuple[FindingsReport, Path]:
        from inference.jobs.store import PRIORITY_BULK, JobState

        staging = self.files.new_staging_dir()
        try:
            for source in case.inputs:
                target = staging / source.name
                shutil.copytree(source, target) if source.is_dir() else shutil.copy2(source, target)
            job_id = uuid.uuid4().hex
            self.files.stage_input(staging, job_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.store.create(job_id=job_id, model=self.model, routed_model=self.model, priority=PRIORITY_BULK)
        self.worker.wake()
        try:
            while not (job := self.store.get(job_id)).state.finished:
                time.sleep(self.poll_s)
            if job.state is not JobState.succeeded:
                detail = (job.error or {}).get("detail") or f"job {job_id} ended {job.state.value}"
                raise CaseFailed(f"{(job.error or {}).get('title', 'Job failed')}: {detail}")
            report = FindingsReport.model_validate_json(self.files.result_path(job_id).read_bytes())
            shutil.copytree(self.files.output_dir(job_id), workdir, dirs_exist_ok=True)
        finally:
            if self.store.get(job_id).state.finished:
                self.store.delete(job_id)
                self.files.remove(job_id)
        return report, workdir


class CaseFailed(Exception):
    """A case's analysis failed on the server (the job's problem detail is the message)."""


class PredictionKeyError(ValueError):
    """The prediction names a summary key the model's reports do not have: a configuration error that stops the
    evaluation (every case would fail the same way)."""


# --- scoring ----------------------------------------------------------------------------------------


def prediction_value(report: FindingsReport, key: str) -> float:
    """The number named by ``key`` (``summary.<name>`` or ``max_confidence``) in ``report``."""
    if key == "max_confidence":
        return max((f.confidence for f in report.findings if f.confidence is not None), default=0.0)
    value = _summary_value(report, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LabelError("model_failure", f"the report's {key} is {value!r}, not a number.")
    return float(value)


def prediction_label(report: FindingsReport, key: str) -> str:
    """The category named by ``key`` (``summary.<name>``) in ``report``, as a class name."""
    value = _summary_value(report, key)
    if value is None or isinstance(value, bool):
        raise LabelError("model_failure", f"the report's {key} is {value!r}, not a category.")
    return class_name(value)


def _summary_value(report: FindingsReport, key: str) -> Any:
    """``report.summary[<name>]`` for ``key`` ``summary.<name>``: LabelError(model_failure) for a rejected study,
    PredictionKeyError when the report has no such key."""
    if report.status is ReportStatus.rejected:
        reasons = "; ".join(report.reasons) or "no reason given"
        raise LabelError("model_failure", f"the model rejected the study ({reasons}).")
    name = key.partition(".")[2]
    if name not in report.summary:
        raise PredictionKeyError(
            f"The prediction {key!r} is not in the model's reports; their summary keys are "
            f"{', '.join(sorted(report.summary)) or 'none'}. Set the prediction to summary.<one of them>."
        )
    return report.summary[name]


def class_name(value: str | float) -> str:
    """A class as text; integral numbers without a decimal part (CSV 2.0 and a model's 2 are both "2")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def score_case(
    spec: EvaluationSpec,
    labels: LabelSet,
    classes: dict[str, int],
    case_id: str,
    report: FindingsReport,
    artifacts: Path,
) -> dict[str, Any]:
    """``truth``, ``prediction`` and per-case ``metrics`` of one analysed case (raises LabelError)."""
    if spec.kind == "classification":
        score = prediction_value(report, spec.prediction or "")
        return {"truth": {"label": classes[case_id]}, "prediction": {"score": score}, "metrics": {}}
    if spec.kind == "multiclass":
        predicted = prediction_label(report, spec.prediction or "")
        return {
            "truth": {"label": class_name(labels.values[case_id])},
            "prediction": {"label": predicted},
            "metrics": {"correct": predicted == class_name(labels.values[case_id])},
        }
    if spec.kind == "regression":
        truth = float(labels.values[case_id])  # LabelSet.keep_numbers dropped the others
        value = prediction_value(report, spec.prediction or "")
        return {
            "truth": {"value": truth},
            "prediction": {"value": value},
            "metrics": {"error": value - truth},
        }
    if spec.kind == "detection":
        nodules = labels.nodules[case_id]
        planar = any(len(n.center) == 2 for found in labels.nodules.values() for n in found)
        candidates = [
            (tuple(where), 1.0 if f.confidence is None else float(f.confidence))
            for f in report.findings
            if f.location is not None
            and (where := f.location.pixel_rc if planar else f.location.patient_lps_mm) is not None
            and (spec.finding_label is None or f.label == spec.finding_label)
        ]
        match = match_candidates(candidates, nodules)
        return {
            "truth": {"nodules": [[*n.center, n.diameter_mm, n.exclude] for n in nodules]},
            "prediction": {"candidates": [[*c, s] for c, s in candidates]},
            "metrics": {"tp_scores": match.tp_scores, "fp_scores": match.fp_scores},
        }
    mask_path = artifacts / MASK_ARTIFACT
    if not mask_path.is_file():
        raise LabelError(
            "model_failure", f"the model wrote no {MASK_ARTIFACT}; segmentation cannot be scored."
        )
    with np.load(mask_path) as data:
        predicted, affine, spacing = data["mask"].astype(np.int32), data["affine"], data["spacing"]
    label_file = labels.masks[case_id]
    array, label_affine, partial = read_mask(label_file)
    truth = align_mask(array, label_affine, affine, predicted.shape, partial=partial, name=label_file.name)
    values = sorted(int(v) for v in set(np.unique(truth)) | set(np.unique(predicted)) if v != 0)
    metrics = segmentation_case_metrics(
        predicted, truth, spacing, values, surface_tolerance_mm=spec.surface_tolerance_mm
    )
    return {
        "truth": {"mask": label_file.name, "labels": [int(v) for v in np.unique(truth) if v]},
        "prediction": {"labels": [int(v) for v in np.unique(predicted) if v]},
        "metrics": metrics,
    }


# --- the run ----------------------------------------------------------------------------------------


# Spec fields that change per-case records; the others (threshold, tolerance, bootstrap) only change the
# aggregate metrics, so a resumed run may change them.
CASE_FIELDS = ("kind", "prediction", "positive", "surface_tolerance_mm", "finding_label")


@dataclass
class RunInfo:
    """Pinned by ``run.json``: a rerun must evaluate the same model weights on the same data and labels."""

    model: str
    model_version: str
    weights_sha256: str
    dataset_sha256: str
    labels_sha256: str
    spec: dict[str, Any] = field(default_factory=dict)


def labels_sha256(path: Path) -> str:
    """SHA-256 of a label file, or of a label folder's (name, content hash) list."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def read_records(out_dir: Path) -> list[dict[str, Any]]:
    """Records of ``cases.jsonl``; a torn last line (crash while writing) is ignored; last record per case wins."""
    path = Path(out_dir) / CASES_FILE
    if not path.is_file():
        return []
    records: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "case_id" in record:
            records[record["case_id"]] = record
    return sorted(records.values(), key=lambda r: r["case_id"])


def _pin_run(out_dir: Path, info: RunInfo) -> None:
    path = out_dir / RUN_FILE
    if path.is_file() and read_records(out_dir):  # with no record yet there is nothing to mix up
        stored = json.loads(path.read_text(encoding="utf-8"))
        for key in ("model", "weights_sha256", "dataset_sha256", "labels_sha256", "spec"):
            if stored.get(key) != asdict(info)[key]:
                raise ValueError(
                    f"{out_dir} holds an evaluation with a different {key.replace('_', ' ')}; "
                    "resume only the same model, data, labels and options, or choose another --out folder."
                )
        return
    path.write_text(json.dumps(asdict(info), indent=2), encoding="utf-8")


Progress = Callable[[int, int, dict[str, Any] | None], None]


def run_cases(
    cases: list[Case],
    labels: LabelSet,
    spec: EvaluationSpec,
    analyzer: Analyzer,
    out_dir: Path,
    info: RunInfo,
    *,
    workers: int = 2,
    retry_failed: bool = False,
    keep_artifacts: bool = True,
    progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Analyse and score every labelled case not yet in ``cases.jsonl`` on ``workers`` threads.

    Returns every record (earlier sessions included) and this session's wall time in seconds. A case whose
    analysis or scoring fails gets a ``failed`` or ``label_error`` record instead of stopping the run;
    ``retry_failed`` runs failed cases again. A PredictionKeyError (a wrong ``prediction``) stops the run.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _pin_run(out_dir, info)
    _end_torn_line(out_dir / CASES_FILE)
    classes: dict[str, int] = {}
    if spec.kind == "classification":
        classes, _ = labels.binary_classes(spec.positive)
    labelled = set(classes) if spec.kind == "classification" else labels.case_ids()
    done = {r["case_id"] for r in read_records(out_dir) if retry_failed is False or r["status"] == "ok"}
    todo = [c for c in cases if c.case_id in labelled and c.case_id not in done]
    total = sum(1 for c in cases if c.case_id in labelled)
    finished = total - len(todo)
    lock = threading.Lock()
    if progress is not None:
        progress(finished, total, None)

    def one(case: Case) -> None:
        nonlocal finished
        record = evaluate_case(case, spec, labels, classes, analyzer, out_dir / "cases" / _safe(case.case_id))
        if not keep_artifacts:
            shutil.rmtree(out_dir / "cases" / _safe(case.case_id), ignore_errors=True)
        with lock:
            with open(out_dir / CASES_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            finished += 1
            if progress is not None:
                progress(finished, total, record)

    started = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="radinfer-eval")
    try:
        for future in [pool.submit(one, case) for case in todo]:
            future.result()
    except BaseException:  # Ctrl-C or a crash: running cases finish and are recorded, queued ones never start
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    wall_s = time.perf_counter() - started
    if todo:
        with open(out_dir / SESSIONS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"cases": len(todo), "wall_s": wall_s, "workers": workers}) + "\n")
    return read_records(out_dir), wall_s


def _end_torn_line(path: Path) -> None:
    """Terminate a last line left unfinished by a crash, so the next record starts on a line of its own."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


def evaluate_case(
    case: Case,
    spec: EvaluationSpec,
    labels: LabelSet,
    classes: dict[str, int],
    analyzer: Analyzer,
    workdir: Path,
) -> dict[str, Any]:
    """Analyse and score one case; failures become the record's status and a one-sentence error."""
    shutil.rmtree(workdir, ignore_errors=True)  # a case interrupted earlier starts clean
    workdir.mkdir(parents=True)
    record: dict[str, Any] = {"case_id": case.case_id, "status": "ok", "error": None}
    started = time.perf_counter()
    try:
        report, artifacts = analyzer(case, workdir)
    except (InputRejected, InferenceError, CaseFailed) as exc:
        return {
            **record,
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "latency_s": time.perf_counter() - started,
        }
    except Exception as exc:  # noqa: BLE001 -- one broken case must not end the evaluation
        # Only the type: messages of unexpected errors may quote dataset values (PHI).
        return {
            **record,
            "status": "failed",
            "error": f"internal error ({type(exc).__name__})",
            "latency_s": time.perf_counter() - started,
        }
    record["latency_s"] = time.perf_counter() - started
    record["report_status"] = report.status.value
    record["timings_s"] = report.timings_s
    try:
        record.update(score_case(spec, labels, classes, case.case_id, report, artifacts))
    except LabelError as exc:  # a report without the value is the model's failure, not a label problem
        status = "failed" if exc.kind == MODEL_FAILURE else "label_error"
        record.update(status=status, error_kind=exc.kind, error=str(exc))
    return record


def _safe(case_id: str) -> str:
    """A folder name for the case's artifacts. An id that had to be changed gets a hash of the original, so
    "case 1" and "case_1" do not share (and wipe) one folder while both run."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in case_id)
    if safe == case_id and safe not in ("", ".", ".."):
        return safe
    return f"{safe}-{hashlib.sha256(case_id.encode()).hexdigest()[:8]}"


def session_throughput(out_dir: Path) -> tuple[int, float]:
    """(cases, wall seconds) summed over the completed sessions of an evaluation."""
    path = Path(out_dir) / SESSIONS_FILE
    cases, wall = 0, 0.0
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            cases, wall = cases + int(entry["cases"]), wall + float(entry["wall_s"])
    return cases, wall
