"""What the running app holds: job store, job files, worker, model registry and engine.

Built by ``create_app``; ``start()``/``stop()`` are called by the lifespan. Models load and warm up on a
background thread so that /healthz answers at once; /readyz reports 503 until they are ready, and the worker's
jobs wait for them. Submission (``accept``) and execution (``execute``) are the two seams between HTTP and
inference; both run off the event loop.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import torch

from api.config import ConfigError, Settings
from dicom_io.archive import unpack
from dicom_io.codecs import available_decoders
from dicom_io.limits import Limits
from dicom_io.network.destinations import parse_destination, parse_destinations
from dicom_io.network.scp import parse_ae_titles
from dicom_io.reader import read_headers
from inference import metrics, pipeline
from inference.batching import request_priority
from inference.device import select_devices
from inference.engine import BundleState, Engine
from inference.errors import BundleError
from inference.findings import FindingsReport
from inference.jobs.files import JobFiles
from inference.jobs.signals import JobSignals
from inference.jobs.store import JobRecord, JobState, JobStore
from inference.jobs.worker import Progress, Worker, ensure_capacity
from inference.pacs import PacsConfig, PacsNode
from inference.registry import Registry
from inference.replicas import EnginePool
from inference.runners import session_providers

log = logging.getLogger("radinfer.api")


def job_concurrency(workers: int | None, devices: list[torch.device]) -> int:
    """Jobs run at once: ``workers``, at least one per device; by default two per GPU (the next job's CPU stages
    overlap with the GPU running the current one) and one per CPU device."""
    if workers is None:
        workers = sum(2 if device.type == "cuda" else 1 for device in devices)
    return max(workers, len(devices))


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = settings.limits()
        self.registry = Registry(settings.models_dirs)
        try:
            devices = select_devices(settings.device)
        except ValueError as exc:  # e.g. cuda requested on a machine without CUDA
            raise ConfigError(f"RADINFER_DEVICE={settings.device}: {exc}") from None
        self.concurrency = job_concurrency(settings.workers, devices)
        jobs_per_device = math.ceil(self.concurrency / len(devices))
        self.engines = EnginePool([  # a Registry per device: each engine loads its own replica of every bundle
            Engine(
                self.registry if n == 0 else Registry(settings.models_dirs),
                device,
                runner=settings.runner,
                jobs=jobs_per_device,
            )
            for n, device in enumerate(devices)
        ])
        self.engine = self.engines.primary  # routing, model cards and evaluations
        self.store = JobStore(settings.resolved_database_url)
        self.files = JobFiles(settings.data_dir)
        self.signals = JobSignals()
        self.worker = Worker(
            self.store,
            self.files,
            self.execute,
            concurrency=self.concurrency,
            on_finish=self.signals.notify,
            lease_s=settings.job_lease_s,
        )
        self.pacs = PacsNode(
            _pacs_config(settings, self.limits),
            submit=lambda folder: self.accept([folder], None).id,
            store=self.store,
            files=self.files,
        )
        self._loaded = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Recover interrupted jobs, start the worker, and load the models in the background."""
        metrics.bind_queue_depth(lambda: self.store.count(JobState.queued))
        self.worker.start()
        threading.Thread(target=self._load_models, name="radinfer-model-loader", daemon=True).start()
        self.pacs.start()

    def stop(self) -> None:
        self.pacs.stop()
        self.worker.stop()
        self.store.close()

    def _load_models(self) -> None:
        try:
            statuses = self.engines.load_all()
            for name, status in statuses.items():
                if status.state is BundleState.ready:
                    bundle = self.registry.get(name)
                    providers = session_providers(bundle.runner)
                    log.info(
                        "model %s ready on %s, runner %s%s (load %.2f s, warm-up %.2f s)",
                        name,
                        bundle.runs_on,
                        bundle.runner.name,
                        f", providers {', '.join(providers)}" if providers else "",
                        status.load_s,
                        status.warmup_s,
                    )
                else:
                    log.error("model %s failed to load: %s", name, status.error)
        finally:
            self._loaded.set()

    def readiness(self) -> dict[str, Any]:
        statuses = self.engines.status()
        errors = [s.error for s in statuses.values() if s.state is BundleState.failed and s.error]
        ready_models = [name for name, s in statuses.items() if s.state is BundleState.ready]
        if self._loaded.is_set() and not statuses:
            errors.append("no model bundle found in " + ", ".join(map(str, self.settings.models_dirs)))
        node_problems = self.pacs.problems()
        return {
            "ready": self.engines.ready and bool(ready_models) and not node_problems,
            "device": ", ".join(str(device) for device in self.engines.devices),
            "models": ready_models,
            "decoders": available_decoders(),
            "error": " | ".join(errors + node_problems) or None,
        }

    def check_capacity(self) -> None:
        """503 with Retry-After (QueueFullError) while the queue is full."""
        ensure_capacity(self.store, self.settings.max_queued_jobs)

    # -- submission ----------------------------------------------------------------------------------

    def accept(self, uploaded: list[Path], model: str | None) -> JobRecord:
        """Unpack and check ``uploaded`` files, route the study, stage the files and queue the job.

        ``uploaded`` is left as it was: the job gets hard links (or copies) of the files, so a caller that retries
        after a failure (the study collector, when the queue is full) still holds every instance, and a crash
        before the job exists loses nothing. Blocking: call it from a worker thread. Raises InputRejected /
        inference errors for the client.
        """
        staging = self.files.new_staging_dir()
        try:
            paths = [_adopt(p, staging, i) for i, p in enumerate(unpack(uploaded, staging, self.limits))]
            study = read_headers(paths, self.limits)
            bundle, _series = self.registry.route(study, model)
            self.check_capacity()
            job_id = uuid.uuid4().hex
            self.files.stage_input(staging, job_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            job = self.store.create(
                job_id=job_id,
                model=model,
                routed_model=bundle.name,
                study_instance_uid=study.study_instance_uid,
                max_queued=self.settings.max_queued_jobs,
            )
        except BaseException:
            self.files.remove(job_id)
            raise
        self.worker.wake()
        log.info("job %s queued for model %s (%d instances)", job.id, bundle.name, len(paths))
        return job

    # -- execution (worker threads) ------------------------------------------------------------------

    def execute(self, job: JobRecord, input_dir: Path, work_dir: Path, progress: Progress) -> FindingsReport:
        """Run one job: wait for the models, then the inference pipeline on the staged study."""
        if not self._loaded.is_set():
            progress("waiting for models", None)
            self._loaded.wait()
        model = job.routed_model or job.model
        if model is None:
            raise BundleError(f"Job {job.id} names no model; it was stored without routing.")
        with request_priority(job.priority), self.engines.acquire() as engine:
            report = pipeline.analyze(
                [input_dir], engine, model=model, limits=self.limits, workdir=work_dir, progress=progress
            )
        return report.model_copy(update={"job_id": job.id})


def _pacs_config(settings: Settings, limits: Limits) -> PacsConfig:
    return PacsConfig(
        work_dir=settings.data_dir / "dicom",
        ae_title=settings.dicom_ae_title,
        dicom_port=settings.dicom_port,
        dicom_host=settings.dicom_host or settings.host,
        allowed_ae_titles=parse_ae_titles(settings.dicom_allowed_ae_titles),
        max_associations=settings.dicom_max_associations,
        max_pdu_bytes=settings.dicom_max_pdu_bytes,
        quiet_period_s=settings.dicom_quiet_period_s,
        destinations=tuple(parse_destinations(settings.destinations)),
        pull_source=parse_destination(settings.pacs_pull_source) if settings.pacs_pull_source else None,
        pull_method=settings.pacs_pull_method,
        delivery_max_attempts=settings.delivery_max_attempts,
        delivery_base_delay_s=settings.delivery_base_delay_s,
        delivery_max_delay_s=settings.delivery_max_delay_s,
        limits=limits,
    )


def _adopt(path: Path, staging: Path, index: int) -> Path:
    """Hard-link a file that ``unpack`` used in place (a plain uploaded file) into the staging folder, or copy it
    where linking fails (another filesystem); the original stays with the caller."""
    if path.is_relative_to(staging):
        return path
    target = staging / "files" / f"{index:05d}" / path.name
    target.parent.mkdir(parents=True)
    try:
        os.link(path, target)
    except OSError:
        shutil.copy2(path, target)
    return target
