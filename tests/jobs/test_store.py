"""JobStore behaviour, run against SQLite and (when available) PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from inference.errors import JobNotFoundError, JobStateError
from inference.jobs.store import (
    PRIORITY_BULK,
    PRIORITY_INTERACTIVE,
    JobRecord,
    JobState,
    JobStore,
    sqlite_url,
)


def test_create_then_get_round_trips_all_fields(store: JobStore) -> None:
    created = store.create(model="lung", routed_model="lung_ct_v1", study_instance_uid="1.2.3", priority=5)
    job = store.get(created.id)
    assert job == created
    assert (job.state, job.stage, job.progress, job.attempts, job.max_attempts) == (
        JobState.queued,
        "queued",
        0,
        0,
        3,
    )
    assert (job.model, job.routed_model, job.study_instance_uid, job.priority) == (
        "lung",
        "lung_ct_v1",
        "1.2.3",
        5,
    )
    assert job.created_at.tzinfo is not None and job.created_at.utcoffset() == timezone.utc.utcoffset(None)
    assert len(job.id) == 32 and job.error is None and job.timings == {}


def test_to_public_is_json_ready_and_hides_worker_id(store: JobStore) -> None:
    store.create()
    job = store.claim_next("host:1")
    public = job.to_public()
    assert "worker_id" not in public
    assert public["state"] == "running"
    assert public["started_at"].endswith("+00:00") and public["finished_at"] is None
    assert json.loads(json.dumps(public)) == public


def test_get_unknown_id_raises_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFoundError, match="No job with id"):
        store.get("0" * 32)


def test_sqlite_store_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    store = JobStore(sqlite_url(tmp_path))
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    assert (tmp_path / "radinfer.db").is_file()
    store.close()


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ValueError, match="SQLite file"):
        JobStore("sqlite://")


def test_list_filters_and_paginates_newest_first(store: JobStore) -> None:
    ids = [store.create(model="a" if i % 2 else "b", study_instance_uid=f"1.{i % 3}").id for i in range(7)]
    page, total = store.list(limit=3)
    assert total == 7 and [j.id for j in page] == ids[::-1][:3]
    page2, _ = store.list(limit=3, offset=3)
    assert [j.id for j in page2] == ids[::-1][3:6]
    by_model, total_a = store.list(model="a")
    assert total_a == 3 and {j.id for j in by_model} == {ids[1], ids[3], ids[5]}
    by_study, total_study = store.list(study_instance_uid="1.0")
    assert total_study == 3 and {j.id for j in by_study} == {ids[0], ids[3], ids[6]}
    store.request_cancel(ids[0])
    cancelled, total_cancelled = store.list(state=JobState.cancelled)
    assert total_cancelled == 1 and cancelled[0].id == ids[0]
    assert store.count(JobState.queued) == 6


def test_list_model_filter_matches_routed_model(store: JobStore) -> None:
    job = store.create(model=None, routed_model="bone_age")
    assert [j.id for j in store.list(model="bone_age")[0]] == [job.id]


def test_claim_takes_lowest_priority_then_oldest(store: JobStore) -> None:
    bulk1 = store.create(priority=PRIORITY_BULK)
    inter1 = store.create(priority=PRIORITY_INTERACTIVE)
    bulk2 = store.create(priority=PRIORITY_BULK)
    inter2 = store.create(priority=PRIORITY_INTERACTIVE)
    order = [store.claim_next("w").id for _ in range(4)]
    assert order == [inter1.id, inter2.id, bulk1.id, bulk2.id]
    assert store.claim_next("w") is None


def test_claim_marks_running_and_counts_the_attempt(store: JobStore) -> None:
    created = store.create()
    job = store.claim_next("host:42")
    assert job.id == created.id
    assert (job.state, job.attempts, job.worker_id) == (JobState.running, 1, "host:42")
    assert job.started_at is not None


def test_concurrent_claims_from_8_threads_never_double_claim(store: JobStore) -> None:
    n_jobs = 200
    created = {store.create().id for _ in range(n_jobs)}
    claimed: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claim_all(worker: int) -> None:
        start.wait()
        while (job := store.claim_next(f"w{worker}")) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    counts = Counter(claimed)
    assert set(counts) == created
    assert max(counts.values()) == 1
    assert store.count(JobState.running) == n_jobs and store.count(JobState.queued) == 0


def test_update_progress_clamps_and_keeps_fraction_when_none(store: JobStore) -> None:
    job = store.create()
    store.claim_next("w")
    assert store.update_progress(job.id, "inference", 1.7, {"load": 0.5}) is False
    store.update_progress(job.id, "postprocess", None)
    updated = store.get(job.id)
    assert (updated.stage, updated.progress, updated.timings) == ("postprocess", 1.0, {"load": 0.5})


def test_update_progress_on_a_job_that_is_not_running_says_stop(store: JobStore) -> None:
    job = store.create()
    assert store.update_progress(job.id, "inference", 0.5) is True
    assert store.get(job.id).stage == "queued"


def test_finish_records_final_state_error_and_timings(store: JobStore) -> None:
    job = store.create()
    store.claim_next("w")
    problem = {"type": "urn:x", "title": "Bad", "detail": "d", "status": 422}
    done = store.finish(job.id, JobState.failed, problem, {"read": 1.25})
    assert (done.state, done.error, done.timings) == (JobState.failed, problem, {"read": 1.25})
    assert done.finished_at is not None
    with pytest.raises(JobStateError, match="it is failed"):
        store.finish(job.id, JobState.succeeded)


def test_finish_rejects_non_final_state(store: JobStore) -> None:
    job = store.create()
    with pytest.raises(ValueError, match="final state"):
        store.finish(job.id, JobState.queued)


def test_cancel_queued_job_is_immediate(store: JobStore) -> None:
    job = store.create()
    cancelled = store.request_cancel(job.id)
    assert cancelled.state is JobState.cancelled and cancelled.finished_at is not None
    assert store.claim_next("w") is None


def test_cancel_running_job_sets_flag_seen_by_progress(store: JobStore) -> None:
    job = store.create()
    store.claim_next("w")
    flagged = store.request_cancel(job.id)
    assert flagged.state is JobState.running and flagged.cancel_requested
    assert store.update_progress(job.id, "inference", 0.3) is True


@pytest.mark.parametrize(
    "final", [JobState.succeeded, JobState.failed, JobState.cancelled], ids=lambda s: s.value
)
def test_cancel_finished_job_raises_state_error(store: JobStore, final: JobState) -> None:
    job = store.create()
    store.claim_next("w")
    store.finish(job.id, final)
    with pytest.raises(JobStateError, match=f"Cannot cancel job {job.id}: it is {final.value}"):
        store.request_cancel(job.id)


def test_cancel_unknown_job_raises_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFoundError):
        store.request_cancel("f" * 32)


def test_requeue_until_max_attempts_then_failed(store: JobStore) -> None:
    job = store.create(max_attempts=2)
    problem = {"type": "urn:x", "title": "OOM", "detail": "CUDA out of memory", "status": 503}
    store.claim_next("w")
    again = store.requeue(job.id, problem)
    assert (again.state, again.attempts, again.error, again.worker_id) == (JobState.queued, 1, problem, None)
    store.claim_next("w")
    final = store.requeue(job.id, problem)
    assert (final.state, final.attempts) == (JobState.failed, 2) and final.finished_at is not None
    assert store.claim_next("w") is None


def test_requeue_of_a_queued_job_raises_state_error(store: JobStore) -> None:
    job = store.create()
    with pytest.raises(JobStateError):
        store.requeue(job.id, {})


_LATER = datetime.now(timezone.utc) + timedelta(days=1)
"""A stale_before every job was updated before: all running jobs count as gone."""


def test_recover_interrupted_requeues_running_jobs(store: JobStore) -> None:
    a, b, c = store.create(), store.create(), store.create()
    store.claim_next("dead")
    store.claim_next("dead")
    assert store.recover_interrupted(stale_before=_LATER) == 2
    states = {j.id: (j.state, j.worker_id) for j in store.list()[0]}
    assert states == {x.id: (JobState.queued, None) for x in (a, b, c)}


def test_recover_interrupted_fails_exhausted_and_cancels_flagged(store: JobStore) -> None:
    exhausted = store.create(max_attempts=1)
    store.claim_next("dead")
    flagged = store.create()
    store.claim_next("dead")
    store.request_cancel(flagged.id)
    assert store.recover_interrupted(stale_before=_LATER) == 0
    failed = store.get(exhausted.id)
    assert failed.state is JobState.failed and failed.error["title"] == "Job interrupted"
    assert store.get(flagged.id).state is JobState.cancelled


def test_delete_removes_finished_job_but_not_running_one(store: JobStore) -> None:
    job = store.create()
    store.claim_next("w")
    with pytest.raises(JobStateError, match="it is running"):
        store.delete(job.id)
    store.finish(job.id, JobState.succeeded)
    store.delete(job.id)
    assert not store.exists(job.id)
    with pytest.raises(JobNotFoundError):
        store.delete(job.id)


def test_set_delivery_stores_json(store: JobStore) -> None:
    job = store.create()
    updated = store.set_delivery(job.id, {"pacs": {"status": "sent", "sop_instances": 3}})
    assert store.get(job.id).delivery == updated.delivery == {"pacs": {"status": "sent", "sop_instances": 3}}


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_claim_skips_rows_locked_by_another_postgres_transaction(store: JobStore) -> None:
    first, second = store.create(), store.create()
    claimed: list[JobRecord | None] = []
    with store.engine.connect() as other:
        other.exec_driver_sql("SELECT id FROM jobs WHERE id = %(id)s FOR UPDATE", {"id": first.id})
        claimer = threading.Thread(target=lambda: claimed.append(store.claim_next("w")))
        claimer.start()
        claimer.join(10)
        blocked = claimer.is_alive()
        other.rollback()  # release the lock (unblocks a claimer that waited instead of skipping)
    claimer.join(10)
    assert not blocked, "claim_next waited for a locked row instead of skipping it"
    assert claimed[0] is not None and claimed[0].id == second.id
    assert store.claim_next("w").id == first.id
