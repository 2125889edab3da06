"""Background worker threads that run queued jobs, exactly once per accepted job.

Crash safety comes from the order of effects: the store says "running" before work starts; the result
becomes visible by renaming work/ to output/; only then does the store say "succeeded". After a crash,
recovery queues running jobs again, and a claimed job whose output/ already exists is marked succeeded
without running it again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import psutil
from pydantic import BaseModel

from dicom_io.errors import InputRejected
from inference import metrics
from inference.errors import RetryableInferenceError, frame_locations, problem_type
from inference.jobs.files import JobFiles
from inference.jobs.store import QUEUE_RETRY_AFTER_S, JobRecord, JobState, JobStore, queue_full, utcnow
from inference.tasks.base import Cancelled

log = logging.getLogger(__name__)

Progress = Callable[[str, float | None], None]
Execute = Callable[[JobRecord, Path, Path, Progress], BaseModel]


def problem(status: int, title: str, detail: str, **extra: object) -> dict[str, object]:
    """An RFC 9457 problem document, stored as the job's ``error``."""
    return {"type": problem_type(title), "title": title, "detail": detail, "status": status, **extra}


def ensure_capacity(store: JobStore, max_queued: int, retry_after_s: int = QUEUE_RETRY_AFTER_S) -> None:
    """Backpressure for submissions: refuse new jobs while ``max_queued`` are already waiting (an early check
    before an upload is read; ``store.create(max_queued=...)`` enforces the limit atomically)."""
    queued = store.count(JobState.queued)
    if queued >= max_queued:
        raise queue_full(queued, max_queued, retry_after_s)


def cleanup_orphans(store: JobStore, files: JobFiles, older_than_s: float) -> int:
    """Remove abandoned uploads and job folders that never got a database row (crash while accepting)."""
    removed = files.cleanup_staging(older_than_s)
    for job_id in files.job_ids():
        if files.age_s(job_id) > older_than_s and not store.exists(job_id):
            files.remove(job_id)
            removed += 1
    return removed


_LIVE_WORKERS: set[str] = set()  # ids of the workers started (and not stopped) in this process


def worker_gone(worker_id: str, claimed_at: datetime | None = None) -> bool:
    """Whether the worker that claimed a job (at ``claimed_at``) is known to be dead: its id (``host:pid:tag``)
    names this host and a process that no longer exists, or one started after the claim (the pid was reused),
    or this very process where no such worker runs any more (a previous incarnation with the same pid, as in
    a restarted container). Elsewhere only its heartbeat can tell."""
    host, _, rest = worker_id.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return worker_id not in _LIVE_WORKERS
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # e.g. access denied: it exists and may be the claimant
        return False
    return claimed_at is not None and started > claimed_at.timestamp() + 1.0  # create_time has ~10 ms steps


class _ProgressReporter:
    """The ``progress`` callback of one attempt: per-stage timings, throttled store writes, cancel checks."""

    def __init__(self, store: JobStore, job: JobRecord, throttle_s: float) -> None:
        self.store = store
        self.job_id = job.id
        self.worker_id = job.worker_id
        self.throttle_s = throttle_s
        self.timings: dict[str, float] = {}
        self.stage: str | None = None
        self.stage_started = time.monotonic()
        self.last_write = float("-inf")

    def close_stage(self) -> None:
        if self.stage is not None:
            elapsed = time.monotonic() - self.stage_started
            self.timings[self.stage] = self.timings.get(self.stage, 0.0) + elapsed
            self.stage = None

    def __call__(self, stage: str, fraction: float | None) -> None:
        now = time.monotonic()
        stage_changed = stage != self.stage
        if stage_changed:
            self.close_stage()
            self.stage, self.stage_started = stage, now
        if not stage_changed and now - self.last_write < self.throttle_s:
            return
        self.last_write = now
        if self.store.update_progress(self.job_id, stage, fraction, self.timings, worker_id=self.worker_id):
            raise Cancelled(f"job {self.job_id} was cancelled or taken over")


class Worker:
    """Runs ``execute`` for claimed jobs on ``concurrency`` background threads (never the event loop)."""

    def __init__(
        self,
        store: JobStore,
        files: JobFiles,
        execute: Execute,
        *,
        concurrency: int = 1,
        poll_interval_s: float = 0.2,
        worker_id: str | None = None,
        progress_throttle_s: float = 0.5,
        orphan_max_age_s: float = 3600.0,
        on_finish: Callable[[str], None] | None = None,
        lease_s: float = 60.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.store = store
        self.files = files
        self.execute = execute
        self.concurrency = concurrency
        self.poll_interval_s = poll_interval_s
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.progress_throttle_s = progress_throttle_s
        self.orphan_max_age_s = orphan_max_age_s
        self.on_finish = on_finish
        self.lease_s = lease_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        _LIVE_WORKERS.add(self.worker_id)
        self._record_published_results()
        recovered = self._recover()
        if recovered:
            log.warning("re-queued %d job(s) interrupted by a previous shutdown or crash", recovered)
        cleanup_orphans(self.store, self.files, self.orphan_max_age_s)
        self._stopping.clear()
        for index in range(self.concurrency):
            thread = threading.Thread(target=self._loop, name=f"radinfer-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        beat = threading.Thread(target=self._heartbeat, name="radinfer-worker-heartbeat", daemon=True)
        beat.start()
        self._threads.append(beat)

    def _recover(self) -> int:
        """Queue again the running jobs of dead workers: at once when the process is known to be gone (this
        host), otherwise once nobody has updated them for ``lease_s`` (another host: several servers may
        share one PostgreSQL store, each heartbeating its own running jobs)."""
        dead = {worker for worker, claimed in self.store.running_workers().items() if worker_gone(worker, claimed)}
        stale_before = utcnow() - timedelta(seconds=self.lease_s)
        return self.store.recover_interrupted(worker_ids=dead, stale_before=stale_before)

    def _heartbeat(self) -> None:
        """Every quarter lease: keep this worker's running jobs fresh, and take back those of dead workers."""
        while not self._stopping.wait(self.lease_s / 4):
            try:
                self.store.heartbeat(self.worker_id)
                recovered = self._recover()
            except Exception as exc:  # noqa: BLE001 -- a store outage must not kill the thread
                log.error("worker heartbeat error (%s)", type(exc).__name__)
                continue
            if recovered:
                log.warning("re-queued %d job(s) of a worker that stopped heartbeating", recovered)
                self.wake()

    def _record_published_results(self) -> None:
        """Running jobs whose result was published before a crash succeeded; record that before recovery
        (which could otherwise fail them for having used their last attempt)."""
        running: list[JobRecord] = []
        while True:
            page, total = self.store.list(state=JobState.running, limit=100, offset=len(running))
            running += page
            if not page or len(running) >= total:
                break
        for job in running:
            if self.files.has_output(job.id):
                log.info("job %s already has a published result; marking it succeeded", job.id)
                self._finish(job, JobState.succeeded, job.routed_model or job.model or "unknown", None)

    def wake(self) -> None:
        """Pick up a new submission now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> bool:
        """Let running jobs finish (up to ``timeout`` s); returns False if some were still running.

        A job still running when the process exits stays "running" and is re-queued at the next start.
        """
        self._stopping.set()
        self._wake.set()
        _LIVE_WORKERS.discard(self.worker_id)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in self._threads if t.is_alive()]
        if alive:
            log.warning("%d worker thread(s) still running a job after %.0f s", len(alive), timeout)
        self._threads = alive
        return not alive

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                job = self.store.claim_next(self.worker_id)
                if job is not None:
                    self.run_job(job)
                    continue
            except Exception as exc:  # noqa: BLE001 -- a store outage must not kill the thread
                log.error(
                    "worker loop error (%s); retrying in %.1f s", type(exc).__name__, self.poll_interval_s
                )
            self._wake.wait(self.poll_interval_s)

    def run_job(self, job: JobRecord) -> None:
        """Run one claimed (running) job to a final state, or back to the queue for a retryable error."""
        model = job.routed_model or job.model or "unknown"
        if self.files.has_output(job.id):
            # An earlier attempt published its result and its process died before recording it.
            log.info("job %s already has a published result; marking it succeeded", job.id)
            self._finish(job, JobState.succeeded, model, None)
            return
        started = time.monotonic()
        reporter = _ProgressReporter(self.store, job, self.progress_throttle_s)
        work_dir = self.files.reset_work(job.id)
        try:
            report = self.execute(job, self.files.input_dir(job.id), work_dir, reporter)
            reporter.close_stage()
            self.files.publish(job.id, report.model_dump_json())
        except Cancelled:
            log.info("job %s cancelled", job.id)
            self._end_attempt(job, reporter, JobState.cancelled, model, None)
        except InputRejected as exc:
            log.info("job %s rejected its input (%s)", job.id, type(exc).__name__)
            error = problem(exc.status, exc.title, exc.detail)
            self._end_attempt(job, reporter, JobState.failed, model, error)
        except RetryableInferenceError as exc:
            self.files.discard_work(job.id)
            reporter.close_stage()
            error = problem(503, "Transient inference failure", str(exc))
            requeued = self.store.requeue(job.id, error, reporter.timings)
            log.warning("job %s hit a retryable %s (attempt %d)", job.id, type(exc).__name__, job.attempts)
            if requeued.state is JobState.failed:
                metrics.JOBS.labels(state=JobState.failed.value, model=model).inc()
        except Exception as exc:  # noqa: BLE001 -- any failure ends the job as a 500
            error_id = uuid.uuid4().hex[:12]
            log.error("job %s failed with %s (error id %s)\n%s", job.id, type(exc).__name__, error_id,
                      frame_locations(exc))
            error = problem(
                500,
                "Internal error",
                f"An unexpected error stopped the job; quote error id {error_id} when reporting it.",
                error_id=error_id,
            )
            self._end_attempt(job, reporter, JobState.failed, model, error)
        else:
            self._finish(job, JobState.succeeded, model, None, reporter.timings)
        finally:
            metrics.JOB_DURATION.labels(model=model).observe(time.monotonic() - started)
            for stage, seconds in reporter.timings.items():
                metrics.JOB_STAGE_SECONDS.labels(stage=stage, model=model).observe(seconds)

    def _end_attempt(
        self, job: JobRecord, reporter: _ProgressReporter, state: JobState, model: str, error: dict | None
    ) -> None:
        self.files.discard_work(job.id)
        reporter.close_stage()
        self._finish(job, state, model, error, reporter.timings)

    def _finish(
        self,
        job: JobRecord,
        state: JobState,
        model: str,
        error: dict | None,
        timings: dict[str, float] | None = None,
    ) -> None:
        self.store.finish(job.id, state, error, timings)
        metrics.JOBS.labels(state=state.value, model=model).inc()
        if self.on_finish is not None:
            self.on_finish(job.id)
