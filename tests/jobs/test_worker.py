"""Worker: runs jobs off the calling thread, publishes atomically, exactly once, with clear failures."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import BaseModel

from dicom_io.errors import LimitExceededError
from inference import metrics
from inference.errors import QueueFullError, RetryableInferenceError
from inference.jobs.files import JobFiles
from inference.jobs.store import JobRecord, JobState, JobStore, sqlite_url
from inference.jobs.worker import Progress, Worker, cleanup_orphans, ensure_capacity, worker_gone


class FakeReport(BaseModel):
    job_id: str
    inputs: list[str]
    thread: str


class Recorder:
    """An ``execute`` callable whose behaviour per call is scripted by the test."""

    def __init__(self, behaviour=None) -> None:
        self.calls: list[str] = []
        self.behaviour = behaviour

    def __call__(self, job: JobRecord, input_dir: Path, work_dir: Path, progress: Progress) -> FakeReport:
        self.calls.append(job.id)
        if self.behaviour is not None:
            self.behaviour(job, work_dir, progress, len(self.calls))
        progress("inference", 0.5)
        (work_dir / "overlay.png").write_bytes(b"png")
        inputs = sorted(p.name for p in input_dir.iterdir())
        return FakeReport(job_id=job.id, inputs=inputs, thread=threading.current_thread().name)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[JobStore]:
    store = JobStore(sqlite_url(tmp_path / "data"))
    yield store
    store.close()


@pytest.fixture
def make_worker(sqlite_store: JobStore, files: JobFiles) -> Iterator:
    workers: list[Worker] = []

    def make(execute, **kwargs) -> Worker:
        kwargs.setdefault("poll_interval_s", 0.05)
        kwargs.setdefault("progress_throttle_s", 0.01)
        worker = Worker(sqlite_store, files, execute, **kwargs)
        workers.append(worker)
        worker.start()
        return worker

    yield make
    for worker in workers:
        assert worker.stop(timeout=10)


@pytest.fixture
def final(wait_for) -> Callable[[JobStore, str], JobRecord]:
    """Wait until a job reaches a final state and return it."""
    return lambda store, job_id: wait_for(lambda: (j := store.get(job_id)).state.finished and j)


def test_job_runs_on_a_worker_thread_and_publishes_result(
    sqlite_store, files, make_worker, stage_study, final
) -> None:
    job_id = stage_study(files, sqlite_store, n_files=3, routed_model="test_model")
    before = (
        metrics.REGISTRY.get_sample_value("jobs_total", {"state": "succeeded", "model": "test_model"}) or 0
    )
    execute = Recorder()
    make_worker(execute)
    job = final(sqlite_store, job_id)
    assert job.state is JobState.succeeded and (job.stage, job.progress, job.attempts) == ("done", 1.0, 1)
    assert "inference" in job.timings and job.error is None
    report = FakeReport.model_validate_json(files.result_path(job_id).read_text())
    assert report.inputs == ["image0.dcm", "image1.dcm", "image2.dcm"]
    assert report.thread.startswith("radinfer-worker-") and report.thread != threading.current_thread().name
    assert files.list_artifacts(job_id) == ["overlay.png"] and not files.work_dir(job_id).exists()
    after = metrics.REGISTRY.get_sample_value("jobs_total", {"state": "succeeded", "model": "test_model"})
    assert after == before + 1
    assert metrics.REGISTRY.get_sample_value("job_duration_seconds_count", {"model": "test_model"}) >= 1


def test_output_is_absent_until_the_result_is_complete(
    sqlite_store, files, make_worker, stage_study, final
) -> None:
    seen: list[bool] = []

    def check(job, work_dir, progress, n) -> None:
        (work_dir / "big.bin").write_bytes(b"0" * 1000)
        seen.append(files.output_dir(job.id).exists())

    job_id = stage_study(files, sqlite_store)
    make_worker(Recorder(check))
    assert final(sqlite_store, job_id).state is JobState.succeeded
    assert seen == [False]
    assert sorted(p.name for p in files.output_dir(job_id).iterdir()) == [
        "big.bin",
        "overlay.png",
        "result.json",
    ]


def test_crash_after_publish_before_db_update_is_not_run_again(
    sqlite_store, files, make_worker, stage_study, final, dead_worker
) -> None:
    job_id = stage_study(files, sqlite_store)
    # A previous process claimed the job, published its result, and died before finish().
    assert sqlite_store.claim_next(dead_worker).id == job_id
    files.reset_work(job_id)
    files.publish(job_id, '{"from": "first attempt"}')
    execute = Recorder()
    make_worker(execute)
    job = final(sqlite_store, job_id)
    assert job.state is JobState.succeeded and execute.calls == []
    assert files.result_path(job_id).read_text() == '{"from": "first attempt"}'


def test_published_result_of_a_last_attempt_is_kept_after_crash(
    sqlite_store, files, make_worker, stage_study, final, dead_worker
) -> None:
    job_id = stage_study(files, sqlite_store, max_attempts=1)
    sqlite_store.claim_next(dead_worker)
    files.reset_work(job_id)
    files.publish(job_id, '{"from": "only attempt"}')
    execute = Recorder()
    make_worker(execute)
    job = final(sqlite_store, job_id)
    assert job.state is JobState.succeeded and job.error is None and execute.calls == []


def test_crash_mid_run_discards_partial_work_and_runs_again(
    sqlite_store, files, make_worker, stage_study, final, dead_worker
) -> None:
    job_id = stage_study(files, sqlite_store)
    sqlite_store.claim_next(dead_worker)
    (files.reset_work(job_id) / "partial.bin").write_bytes(b"half")
    execute = Recorder()
    make_worker(execute)
    job = final(sqlite_store, job_id)
    assert job.state is JobState.succeeded and job.attempts == 2 and execute.calls == [job_id]
    assert "partial.bin" not in files.list_artifacts(job_id)


def test_cancel_mid_run_stops_the_job(sqlite_store, files, make_worker, stage_study, final, wait_for) -> None:
    def slow(job, work_dir, progress, n) -> None:
        for step in range(1, 2000):
            progress("inference", step / 2000)
            time.sleep(0.005)

    job_id = stage_study(files, sqlite_store)
    execute = Recorder(slow)
    make_worker(execute)
    wait_for(lambda: sqlite_store.get(job_id).progress > 0)
    sqlite_store.request_cancel(job_id)
    job = final(sqlite_store, job_id)
    assert job.state is JobState.cancelled and job.stage == "inference" and 0 < job.progress < 1
    assert "inference" in job.timings and execute.calls == [job_id]
    assert not files.has_output(job_id) and not files.work_dir(job_id).exists()


def test_input_rejected_fails_with_its_4xx_problem(
    sqlite_store, files, make_worker, stage_study, final
) -> None:
    def reject(job, work_dir, progress, n) -> None:
        raise LimitExceededError("The study has 3000 files; the limit is 2000.", filename="upload.zip")

    job_id = stage_study(files, sqlite_store)
    make_worker(Recorder(reject))
    job = final(sqlite_store, job_id)
    assert job.state is JobState.failed
    assert job.error["status"] == 413 and job.error["title"] == "Input exceeds a configured limit"
    assert job.error["detail"] == "The study has 3000 files; the limit is 2000."
    assert not files.has_output(job_id)


def test_unexpected_error_fails_with_500_without_leaking_details(
    sqlite_store, files, make_worker, caplog, stage_study, final
) -> None:
    def boom(job, work_dir, progress, n) -> None:
        raise ValueError("bad value DOE^JOHN in PatientName")

    job_id = stage_study(files, sqlite_store)
    with caplog.at_level(logging.INFO, logger="inference.jobs.worker"):
        make_worker(Recorder(boom))
        job = final(sqlite_store, job_id)
    assert job.state is JobState.failed
    assert (job.error["status"], job.error["title"]) == (500, "Internal error")
    assert job.error["error_id"] in job.error["detail"] and "DOE" not in str(job.error)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert job_id in logged and "ValueError" in logged and job.error["error_id"] in logged
    assert "DOE^JOHN" not in logged and "test_worker.py" in logged  # frames, not the message


def test_retryable_error_requeues_then_succeeds(sqlite_store, files, make_worker, stage_study, final) -> None:
    def flaky(job, work_dir, progress, n) -> None:
        if n == 1:
            raise RetryableInferenceError("CUDA out of memory")

    job_id = stage_study(files, sqlite_store)
    execute = Recorder(flaky)
    make_worker(execute)
    job = final(sqlite_store, job_id)
    assert job.state is JobState.succeeded and job.attempts == 2 and execute.calls == [job_id, job_id]


def test_retryable_error_on_last_attempt_fails(sqlite_store, files, make_worker, stage_study, final) -> None:
    def always(job, work_dir, progress, n) -> None:
        raise RetryableInferenceError("CUDA out of memory")

    job_id = stage_study(files, sqlite_store, max_attempts=2)
    make_worker(Recorder(always))
    job = final(sqlite_store, job_id)
    assert job.state is JobState.failed and job.attempts == 2 and job.error["status"] == 503


def test_wake_picks_a_new_job_without_waiting_for_the_poll(
    sqlite_store, files, make_worker, stage_study, final
) -> None:
    worker = make_worker(Recorder(), poll_interval_s=60)
    time.sleep(0.2)  # let the thread find the queue empty and start its 60 s wait
    job_id = stage_study(files, sqlite_store)
    worker.wake()
    assert final(sqlite_store, job_id).state is JobState.succeeded


def test_concurrency_runs_jobs_in_parallel_and_each_once(
    sqlite_store, files, make_worker, stage_study, final
) -> None:
    barrier = threading.Barrier(3, timeout=10)

    def together(job, work_dir, progress, n) -> None:
        if n <= 3:
            barrier.wait()  # only passes if three jobs run at the same time

    job_ids = [stage_study(files, sqlite_store) for _ in range(6)]
    execute = Recorder(together)
    make_worker(execute, concurrency=3)
    assert all(final(sqlite_store, j).state is JobState.succeeded for j in job_ids)
    assert sorted(execute.calls) == sorted(job_ids)


def test_start_requeues_interrupted_jobs(sqlite_store, files, make_worker, stage_study, final, dead_worker) -> None:
    job_id = stage_study(files, sqlite_store)
    sqlite_store.claim_next(dead_worker)
    make_worker(Recorder())
    assert final(sqlite_store, job_id).state is JobState.succeeded


def test_ensure_capacity_raises_queue_full_at_the_limit(sqlite_store) -> None:
    ensure_capacity(sqlite_store, max_queued=1)
    sqlite_store.create()
    with pytest.raises(QueueFullError, match="queue is full") as info:
        ensure_capacity(sqlite_store, max_queued=1, retry_after_s=7)
    assert info.value.retry_after_s == 7


def test_cleanup_orphans_removes_old_unregistered_job_folders(sqlite_store, files, stage_study) -> None:
    registered = stage_study(files, sqlite_store)
    staging = files.new_staging_dir()
    orphan = "a" * 32
    files.stage_input(staging, orphan)  # crash before the row was created
    assert cleanup_orphans(sqlite_store, files, older_than_s=3600) == 0
    assert cleanup_orphans(sqlite_store, files, older_than_s=-1) == 1
    assert files.job_ids() == [registered]


def test_progress_writes_are_throttled_within_a_stage_but_not_on_stage_change(
    sqlite_store, files, make_worker, stage_study, final, monkeypatch
) -> None:
    writes: list[str] = []
    original = sqlite_store.update_progress

    def counting(job_id, stage, progress, timings=None, **kwargs):
        writes.append(stage)
        return original(job_id, stage, progress, timings, **kwargs)

    monkeypatch.setattr(sqlite_store, "update_progress", counting)

    def chatty(job, work_dir, progress, n) -> None:
        for step in range(100):
            progress("load", step / 100)
        progress("segment", None)

    job_id = stage_study(files, sqlite_store)
    make_worker(Recorder(chatty), progress_throttle_s=60)
    assert final(sqlite_store, job_id).state is JobState.succeeded
    assert writes == ["load", "segment", "inference"]


def test_on_finish_is_called_once_the_final_state_is_stored(
    sqlite_store, files, make_worker, stage_study, wait_for
) -> None:
    """Requests waiting on a job are woken by this hook: by then the store must already show the final state."""
    seen: list[tuple[str, JobState]] = []
    ok, bad = stage_study(files, sqlite_store), stage_study(files, sqlite_store)

    def fail_one(job, work_dir, progress, n) -> None:
        if job.id == bad:
            raise LimitExceededError("too many files", filename="upload.zip")

    make_worker(Recorder(fail_one), on_finish=lambda job_id: seen.append((job_id, sqlite_store.get(job_id).state)))
    wait_for(lambda: len(seen) == 2)
    assert sorted(seen) == sorted([(ok, JobState.succeeded), (bad, JobState.failed)])


def test_worker_gone_tells_dead_processes_of_this_host_only(dead_worker) -> None:
    assert worker_gone(dead_worker)
    assert not worker_gone(f"{socket.gethostname()}:{os.getppid()}:alive")  # a live process
    assert not worker_gone(f"another-host.example:{os.getpid()}:x")  # only a lapsed heartbeat can tell
    assert not worker_gone("no-pid-in-this-id")
    assert worker_gone(f"{socket.gethostname()}:{os.getpid()}:previous-incarnation")
    parent = f"{socket.gethostname()}:{os.getppid()}:x"
    assert worker_gone(parent, claimed_at=datetime(2000, 1, 1, tzinfo=timezone.utc))  # that pid was reused since
    assert not worker_gone(parent, claimed_at=datetime.now(timezone.utc))  # the claimant itself


def test_running_job_of_another_host_is_taken_back_only_after_its_lease(
    sqlite_store, files, make_worker, stage_study, final
) -> None:
    job_id = stage_study(files, sqlite_store)
    sqlite_store.claim_next("another-host.example:1234:abcd")  # alive for all this host can tell
    execute = Recorder()
    make_worker(execute, lease_s=1.0)
    time.sleep(0.3)
    assert sqlite_store.get(job_id).state is JobState.running and execute.calls == []
    job = final(sqlite_store, job_id)  # no heartbeat for 1 s: recovered by the sweep and run here
    assert job.state is JobState.succeeded and job.attempts == 2 and execute.calls == [job_id]


def test_heartbeat_keeps_a_long_job_from_being_taken_by_another_server(
    sqlite_store, files, make_worker, stage_study, final, wait_for
) -> None:
    """Two servers on one store: a job running for several leases without progress reports stays with the
    worker that heartbeats it and runs once."""

    def long(job, work_dir, progress, n) -> None:
        time.sleep(1.5)

    job_id = stage_study(files, sqlite_store)
    first = Recorder(long)
    make_worker(first, lease_s=0.4, worker_id="another-host.example:1:first")
    wait_for(lambda: sqlite_store.get(job_id).state is JobState.running)
    second = Recorder()
    make_worker(second, lease_s=0.4, worker_id="yet-another-host.example:2:second")
    job = final(sqlite_store, job_id)
    assert job.state is JobState.succeeded and job.attempts == 1
    assert first.calls == [job_id] and second.calls == []


def test_progress_of_a_job_taken_over_tells_its_old_worker_to_stop(sqlite_store) -> None:
    job = sqlite_store.create()
    sqlite_store.claim_next("old")
    long_ago = datetime(2000, 1, 1, tzinfo=timezone.utc)  # not stale: only the dead worker's id counts
    assert sqlite_store.recover_interrupted(worker_ids={"old"}, stale_before=long_ago) == 1
    sqlite_store.claim_next("new")
    assert sqlite_store.update_progress(job.id, "inference", 0.5, worker_id="old") is True
    assert sqlite_store.update_progress(job.id, "inference", 0.5, worker_id="new") is False
