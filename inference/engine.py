"""The engine: loads and warms up bundles at start-up, runs tasks and wraps results in the report envelope."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import Enum

import torch

from dicom_io.codecs import lossy_compression
from dicom_io.types import Series, Study
from dicom_io.writers.provenance import ModelProvenance
from dicom_io.writers.source import left_out_attributes
from inference.batching import BatchedRunner, BatchingConfig, DeviceQueue
from inference.bundle import Bundle
from inference.cuda import DEFAULT_MAX_SW_BATCH, is_oom, sw_batch_size_for
from inference.device import select_device
from inference.errors import BundleError, DeviceOutOfMemoryError
from inference.findings import (
    RESEARCH_USE_DISCLAIMER,
    SYNTHETIC_TRAINING_DISCLAIMER,
    ArtifactInfo,
    FindingsReport,
    ModelInfo,
    SeriesRef,
)
from inference.registry import Registry
from inference.tasks import TASKS
from inference.tasks.base import TaskContext, TaskResult


class BundleState(str, Enum):
    pending = "pending"
    ready = "ready"
    failed = "failed"


@dataclass
class BundleStatus:
    name: str
    state: BundleState = BundleState.pending
    error: str | None = None
    load_s: float | None = None
    warmup_s: float | None = None


class Engine:
    """Runs bundles from ``registry`` on ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``).

    ``runner`` overrides every bundle's radinfer.json ``runner`` (``"auto"``, ``"torch"``, ``"torchscript"``,
    ``"onnx"``; see ``Bundle.load``); None keeps each bundle's own choice. ``jobs``: how many jobs may run on
    the device at once (they share its memory for sliding-window batches).
    """

    def __init__(
        self,
        registry: Registry,
        device: str | torch.device = "auto",
        *,
        runner: str | None = None,
        jobs: int = 1,
    ) -> None:
        self.registry = registry
        self.device = select_device(device)
        self.runner = runner
        self.jobs = jobs
        self._lock = threading.Lock()  # guards _status; loading uses one lock per bundle
        self._load_locks: dict[str, threading.Lock] = {}
        self._loaded_all = False
        self.queue: DeviceQueue | None = None  # created for the first bundle with radinfer.json "batching"
        self._status = {name: BundleStatus(name) for name in registry.names()}
        for name, error in registry.errors.items():
            self._status[name] = BundleStatus(name, BundleState.failed, error)

    @property
    def ready(self) -> bool:
        """True once ``load_all()`` has finished and every discovered bundle loaded and warmed up."""
        return self._loaded_all and all(s.state is BundleState.ready for s in self._status.values())

    def status(self) -> dict[str, BundleStatus]:
        """Per-bundle state for /readyz and /models (copies)."""
        with self._lock:
            return {name: BundleStatus(**vars(s)) for name, s in sorted(self._status.items())}

    def load_all(self) -> dict[str, BundleStatus]:
        """Load and warm up every bundle; failures are recorded per bundle, not raised."""
        for name in self.registry.names():
            try:
                self.ensure_loaded(self.registry.bundles[name])
            except BundleError:
                pass
        self._loaded_all = True
        return self.status()

    def ensure_loaded(self, bundle: Bundle) -> None:
        """Load and warm up ``bundle`` once (raises BundleError, also later, if that failed).

        Loading holds only this bundle's lock, so ``status()`` and other bundles are not blocked meanwhile.
        """
        with self._lock:
            status = self._status.setdefault(bundle.name, BundleStatus(bundle.name))
            load_lock = self._load_locks.setdefault(bundle.name, threading.Lock())
        with load_lock:
            if status.state is BundleState.ready:
                return
            if status.state is BundleState.failed:
                raise BundleError(status.error)
            try:
                start = time.perf_counter()
                if bundle.task not in TASKS:
                    raise BundleError(
                        f"Bundle {bundle.name!r}: task {bundle.task!r} in radinfer.json is unknown; "
                        f"known tasks: {', '.join(TASKS)}."
                    )
                if self.runner is None:
                    bundle.load(self.device)
                else:
                    bundle.load(self.device, runner=self.runner)
                load_s = time.perf_counter() - start
                warmup_s = bundle.warmup()
                self._configure_execution(bundle)
            except Exception as exc:
                error = (
                    str(exc)
                    if isinstance(exc, BundleError)
                    else (f"Bundle {bundle.name!r} failed to load: {type(exc).__name__}: {exc}")
                )
                with self._lock:
                    status.state, status.error = BundleState.failed, error
                if isinstance(exc, BundleError):
                    raise
                raise BundleError(error) from exc
            with self._lock:
                status.state, status.load_s, status.warmup_s = (
                    BundleState.ready,
                    round(load_s, 4),
                    round(warmup_s, 4),
                )

    def _configure_execution(self, bundle: Bundle) -> None:
        """After warm-up: size the sliding-window patch batch to free GPU memory, and route the runner
        through this device's batching queue when radinfer.json asks for ``batching``."""
        inferer = bundle.get("inferer")
        # where the runner runs: on the CPU (an ONNX Runtime session that fell back) the bundle's configured batch
        # is kept, GPU memory says nothing about it
        device = bundle.runs_on
        if device.type == "cuda" and isinstance(getattr(inferer, "sw_batch_size", None), int):
            inferer.sw_batch_size = sw_batch_size_for(
                bundle.runner,
                (bundle.input_channels(), *bundle.input_spatial_shape()),
                device,
                configured=inferer.sw_batch_size,
                ceiling=int(bundle.radinfer.get("max_sw_batch_size", DEFAULT_MAX_SW_BATCH)),
                jobs=self.jobs,
            )
        config = BatchingConfig.from_radinfer(bundle.radinfer)
        if config.max_batch > 1:
            with self._lock:
                if self.queue is None:
                    self.queue = DeviceQueue(self.device)
            self.queue.register(bundle.name, bundle.runner, config)
            bundle.runner = BatchedRunner(self.queue, bundle.name, bundle.runner)

    def run(self, study: Study, bundle: Bundle, series: list[Series], ctx: TaskContext) -> FindingsReport:
        """Run ``bundle``'s task on the routed ``series`` and return the findings report."""
        self.ensure_loaded(bundle)
        task = TASKS[bundle.task]()
        start = time.perf_counter()
        try:
            result = task.run(bundle, study, series, ctx)
        except Exception as exc:
            if not is_oom(exc):  # also a TorchScript module's OOM, a RuntimeError (see is_oom)
                raise
            raise DeviceOutOfMemoryError(
                f"CUDA ran out of memory running {bundle.name!r}; "
                "the job can be retried when the GPU is less busy."
            ) from exc
        ctx.timings_s["task_total"] = time.perf_counter() - start
        return FindingsReport(
            study_instance_uid=study.study_instance_uid,
            series=[
                SeriesRef(
                    series_instance_uid=s.series_instance_uid,
                    modality=s.modality,
                    num_instances=len(s.instances),
                    description=s.description,
                )
                for s in result.series_used
            ],
            model=model_info(bundle),
            status=result.status,
            reasons=result.reasons,
            findings=result.findings,
            summary=result.summary | _left_out_note(result) | _lossy_note(result),
            timings_s={name: round(seconds, 4) for name, seconds in ctx.timings_s.items()},
            artifacts=[
                ArtifactInfo(
                    name=a.name,
                    media_type=a.media_type,
                    size_bytes=(ctx.workdir / a.name).stat().st_size,
                    description=a.description,
                    sop_class_uid=a.sop_class_uid,
                    sop_instance_uid=a.sop_instance_uid,
                )
                for a in result.artifacts
            ],
            disclaimer=report_disclaimer(bundle),
        )


def model_info(bundle: Bundle) -> ModelInfo:
    if bundle.weights_sha256 is None:
        raise BundleError(f"Bundle {bundle.name!r} is not loaded; its weights hash is unknown.")
    return ModelInfo(
        name=bundle.name,
        version=bundle.version,
        weights_sha256=bundle.weights_sha256,
        task=bundle.task,
        intended_use=bundle.intended_use,
        trained_on_synthetic_data=bundle.trained_on_synthetic_data,
        disclaimer=SYNTHETIC_TRAINING_DISCLAIMER
        if bundle.trained_on_synthetic_data
        else RESEARCH_USE_DISCLAIMER,
        runner=getattr(bundle.runner, "name", None),
        device=str(bundle.runs_on),
    )


def result_provenance(bundle: Bundle) -> ModelProvenance:
    """The model as its DICOM results name it, with the report's whole disclaimer: research use only, and for a
    synthetic-trained model the synthetic training too (``model_info`` gives the latter alone)."""
    return ModelProvenance.from_model_info(
        model_info(bundle).model_copy(update={"disclaimer": report_disclaimer(bundle)})
    )


def _left_out_note(result: TaskResult) -> dict[str, str]:
    """``dicom_attributes_left_out``: the keywords (never the values: PHI) of the source Patient and Study
    attributes that the DICOM results leave out because their values are not valid DICOM; {} when none. These
    attributes are the same in every instance of a series: its first instance speaks for it."""
    if not any(a.media_type == "application/dicom" for a in result.artifacts):
        return {}
    keywords = {k for s in result.series_used if s.instances for k in left_out_attributes(s.instances[0].dataset)}
    return {"dicom_attributes_left_out": ", ".join(sorted(keywords))} if keywords else {}


def _lossy_note(result: TaskResult) -> dict[str, str]:
    """``lossy_input``: how the pixels the model read were compressed with loss (a lossy JPEG can shift sizes
    and scores); {} when no series used says so."""
    found = sorted({how for s in result.series_used if s.instances
                    if (how := lossy_compression(s.instances[0].dataset)) is not None})
    return {"lossy_input": "; ".join(found)} if found else {}


def report_disclaimer(bundle: Bundle) -> str:
    if bundle.trained_on_synthetic_data:
        return f"{RESEARCH_USE_DISCLAIMER} {SYNTHETIC_TRAINING_DISCLAIMER}"
    return RESEARCH_USE_DISCLAIMER
