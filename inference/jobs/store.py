"""Durable job store: SQLite (WAL) by default, PostgreSQL when a URL is configured, one code path.

Every state transition is a single guarded statement (``UPDATE ... WHERE id = :id AND state = ...``) so
concurrent workers, threads or processes never apply conflicting transitions; the claim adds
``FOR UPDATE SKIP LOCKED`` in its sub-select, which PostgreSQL honours and SQLite (whose writers are
serialised anyway) ignores.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from inference.errors import JobNotFoundError, JobStateError, QueueFullError, problem_type


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.succeeded, JobState.failed, JobState.cancelled)


PRIORITY_INTERACTIVE = 0
PRIORITY_BULK = 10
QUEUE_RETRY_AFTER_S = 5
_QUEUE_LOCK_KEY = 0x7261_6469_6E66  # PostgreSQL advisory lock that serialises capacity-checked inserts

INTERRUPTED_PROBLEM = {
    "type": problem_type("Job interrupted"),
    "title": "Job interrupted",
    "detail": "The server stopped while this job was running, on every allowed attempt; "
    "resubmit the study or check the server logs.",
    "status": 500,
}


def queue_full(queued: int, max_queued: int, retry_after_s: int = QUEUE_RETRY_AFTER_S) -> QueueFullError:
    return QueueFullError(
        f"The job queue is full ({queued} jobs waiting, limit {max_queued}); retry after {retry_after_s} s.",
        retry_after_s=retry_after_s,
    )


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(sa.TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive UTC text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the job store; use timezone-aware UTC datetimes")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "state",
        sa.Enum(JobState, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]),
        nullable=False,
    ),
    sa.Column("stage", sa.String(64), nullable=False, default="queued"),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("model", sa.String(128)),
    sa.Column("routed_model", sa.String(128)),
    sa.Column("study_instance_uid", sa.String(64)),
    sa.Column("priority", sa.Integer, nullable=False, default=PRIORITY_INTERACTIVE),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False, default=3),
    sa.Column("worker_id", sa.String(128)),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("timings", sa.JSON, nullable=False, default=dict),
    sa.Column("error", sa.JSON),
    sa.Column("delivery", sa.JSON),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Index("ix_jobs_claim", "state", "priority", "created_at"),
    sa.Index("ix_jobs_study", "study_instance_uid"),
)


@dataclass(frozen=True)
class JobRecord:
    id: str
    state: JobState
    stage: str
    progress: float
    model: str | None
    routed_model: str | None
    study_instance_uid: str | None
    priority: int
    attempts: int
    max_attempts: int
    worker_id: str | None
    cancel_requested: bool
    timings: dict[str, float]
    error: dict[str, Any] | None
    delivery: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: sa.Row) -> JobRecord:
        values = dict(row._mapping)
        values["state"] = JobState(values["state"])
        values["timings"] = values["timings"] or {}
        return cls(**values)

    def to_public(self) -> dict[str, Any]:
        """JSON-ready view for clients (no worker ids)."""
        out = asdict(self)
        del out["worker_id"]
        out["state"] = self.state.value
        for key in ("created_at", "updated_at", "started_at", "finished_at"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out


def sqlite_url(data_dir: Path) -> str:
    """The default store location: ``<data_dir>/radinfer.db``."""
    return f"sqlite:///{Path(data_dir).resolve() / 'radinfer.db'}"


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    # FULL: an accepted job survives power loss, not only a process crash; job writes are rare.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def create_store_engine(url: str) -> Engine:
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        if sa_url.database in (None, "", ":memory:"):
            raise ValueError(
                "the job store needs a SQLite file (e.g. sqlite:////data/radinfer.db), not memory"
            )
        Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(sa_url, pool_size=10, max_overflow=20)
        sa.event.listen(engine, "connect", _configure_sqlite)
        return engine
    return sa.create_engine(sa_url, pool_size=10, max_overflow=20, pool_pre_ping=True)


class JobStore:
    """Jobs table access. Thread-safe; on PostgreSQL also safe across processes."""

    def __init__(self, url: str) -> None:
        self.engine = create_store_engine(url)
        metadata.create_all(self.engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    # --- creation and queries -------------------------------------------------------------------------

    def create(
        self,
        *,
        job_id: str | None = None,
        model: str | None = None,
        routed_model: str | None = None,
        study_instance_uid: str | None = None,
        priority: int = PRIORITY_INTERACTIVE,
        max_attempts: int = 3,
        max_queued: int | None = None,
    ) -> JobRecord:
        """Insert a queued job. With ``max_queued``, the insert and the queue-length check are one atomic step
        (QueueFullError, nothing inserted, when the queue would exceed it): a check made before the insert lets
        concurrent submissions all pass it."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        now = utcnow()
        values = {
            "id": job_id or uuid.uuid4().hex,
            "state": JobState.queued,
            "stage": "queued",
            "progress": 0.0,
            "model": model,
            "routed_model": routed_model,
            "study_instance_uid": study_instance_uid,
            "priority": priority,
            "attempts": 0,
            "max_attempts": max_attempts,
            "cancel_requested": False,
            "timings": {},
            "created_at": now,
            "updated_at": now,
        }
        with self.engine.begin() as conn:
            if max_queued is not None and self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_QUEUE_LOCK_KEY)))
            # On SQLite the INSERT, the transaction's first statement, takes the database's write lock.
            row = conn.execute(jobs.insert().values(**values).returning(*jobs.c)).one()
            if max_queued is not None:
                queued = self._count_in(conn, JobState.queued)
                if queued > max_queued:  # raising rolls the insert back
                    raise queue_full(queued - 1, max_queued)
        return JobRecord.from_row(row)

    def get(self, job_id: str) -> JobRecord:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one_or_none()
        if row is None:
            raise JobNotFoundError(f"No job with id {job_id!r}; list jobs with GET /v1/jobs.")
        return JobRecord.from_row(row)

    def exists(self, job_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(jobs.c.id).where(jobs.c.id == job_id)).first() is not None

    def list(
        self,
        state: JobState | None = None,
        model: str | None = None,
        study_instance_uid: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[JobRecord], int]:
        """Newest first, with the total number of matching jobs for pagination."""
        conditions = []
        if state is not None:
            conditions.append(jobs.c.state == JobState(state))
        if model is not None:
            conditions.append(sa.or_(jobs.c.model == model, jobs.c.routed_model == model))
        if study_instance_uid is not None:
            conditions.append(jobs.c.study_instance_uid == study_instance_uid)
        query = (
            sa.select(jobs)
            .where(*conditions)
            .order_by(jobs.c.created_at.desc(), jobs.c.id)
            .limit(limit)
            .offset(offset)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            total = conn.execute(sa.select(sa.func.count()).select_from(jobs).where(*conditions)).scalar_one()
        return [JobRecord.from_row(r) for r in rows], total

    def count(self, state: JobState) -> int:
        with self.engine.connect() as conn:
            return self._count_in(conn, state)

    @staticmethod
    def _count_in(conn: sa.Connection, state: JobState) -> int:
        return conn.execute(
            sa.select(sa.func.count()).select_from(jobs).where(jobs.c.state == JobState(state))
        ).scalar_one()

    # --- transitions ----------------------------------------------------------------------------------

    @staticmethod
    def _update_in(conn: sa.Connection, job_id: str, *where: Any, **values: Any) -> JobRecord | None:
        """Apply ``values`` if the job matches ``where``; the updated record, or None if nothing matched."""
        values.setdefault("updated_at", utcnow())
        stmt = jobs.update().where(jobs.c.id == job_id, *where).values(**values).returning(*jobs.c)
        row = conn.execute(stmt).one_or_none()
        return JobRecord.from_row(row) if row is not None else None

    def _update(self, job_id: str, *where: Any, **values: Any) -> JobRecord | None:
        with self.engine.begin() as conn:
            return self._update_in(conn, job_id, *where, **values)

    def _state_error(self, job_id: str, action: str) -> JobStateError:
        job = self.get(job_id)  # raises JobNotFoundError
        return JobStateError(f"Cannot {action} job {job_id}: it is {job.state.value}.")

    def claim_next(self, worker_id: str) -> JobRecord | None:
        """Atomically move the most urgent queued job (lowest priority, oldest) to running."""
        candidate = (
            sa.select(jobs.c.id)
            .where(jobs.c.state == JobState.queued)
            .order_by(jobs.c.priority, jobs.c.created_at, jobs.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        now = utcnow()
        stmt = (
            jobs.update()
            .where(jobs.c.id == candidate, jobs.c.state == JobState.queued)
            .values(
                state=JobState.running,
                stage="starting",
                progress=0.0,
                worker_id=worker_id,
                attempts=jobs.c.attempts + 1,
                started_at=now,
                updated_at=now,
            )
            .returning(*jobs.c)
        )
        with self.engine.begin() as conn:
            row = conn.execute(stmt).one_or_none()
        return JobRecord.from_row(row) if row is not None else None

    def update_progress(
        self,
        job_id: str,
        stage: str,
        progress: float | None,
        timings: dict[str, float] | None = None,
        *,
        worker_id: str | None = None,
    ) -> bool:
        """Record progress of a running job (held by ``worker_id`` when given). Returns True when the worker
        should stop: cancel requested, or the job is no longer running for it (deleted, or recovered from
        it after its heartbeat lapsed)."""
        values: dict[str, Any] = {"stage": stage}
        if progress is not None:
            values["progress"] = min(max(float(progress), 0.0), 1.0)
        if timings is not None:
            values["timings"] = dict(timings)
        held = [jobs.c.state == JobState.running]
        if worker_id is not None:
            held.append(jobs.c.worker_id == worker_id)
        job = self._update(job_id, *held, **values)
        return job is None or job.cancel_requested

    def finish(
        self,
        job_id: str,
        state: JobState,
        error: dict[str, Any] | None = None,
        timings: dict[str, float] | None = None,
    ) -> JobRecord:
        """Move a running job to a final state (``timings``: seconds per stage of this attempt)."""
        state = JobState(state)
        if not state.finished:
            raise ValueError(f"finish() needs a final state, got {state.value}")
        now = utcnow()
        values: dict[str, Any] = {"state": state, "error": error, "finished_at": now, "updated_at": now}
        if timings is not None:
            values["timings"] = dict(timings)
        if state is JobState.succeeded:
            values.update(stage="done", progress=1.0)
        job = self._update(job_id, jobs.c.state == JobState.running, **values)
        if job is None:
            raise self._state_error(job_id, f"finish ({state.value})")
        return job

    def requeue(
        self, job_id: str, error: dict[str, Any], timings: dict[str, float] | None = None
    ) -> JobRecord:
        """A retryable failure of a running job: back to queued while attempts remain, else failed."""
        running = jobs.c.state == JobState.running
        common: dict[str, Any] = {"error": error, "worker_id": None}
        if timings is not None:
            common["timings"] = dict(timings)
        with self.engine.begin() as conn:
            job = self._update_in(
                conn,
                job_id,
                running,
                jobs.c.attempts >= jobs.c.max_attempts,
                state=JobState.failed,
                finished_at=utcnow(),
                **common,
            )
            if job is None:
                job = self._update_in(conn, job_id, running, state=JobState.queued, stage="queued", **common)
        if job is None:
            raise self._state_error(job_id, "requeue")
        return job

    def request_cancel(self, job_id: str) -> JobRecord:
        """Queued jobs are cancelled at once; running ones are flagged and stop at their next progress report."""
        now = utcnow()
        job = self._update(
            job_id,
            jobs.c.state == JobState.queued,
            state=JobState.cancelled,
            stage="cancelled",
            finished_at=now,
        )
        if job is None:
            job = self._update(job_id, jobs.c.state == JobState.running, cancel_requested=True)
        if job is None:
            raise self._state_error(job_id, "cancel")
        return job

    def set_delivery(self, job_id: str, delivery: dict[str, Any]) -> JobRecord:
        job = self._update(job_id, delivery=delivery)
        if job is None:
            raise JobNotFoundError(f"No job with id {job_id!r}; list jobs with GET /v1/jobs.")
        return job

    def delete(self, job_id: str) -> None:
        """Delete a job that is not running (cancel a running job first)."""
        with self.engine.begin() as conn:
            deleted = conn.execute(
                jobs.delete().where(jobs.c.id == job_id, jobs.c.state != JobState.running)
            ).rowcount
        if not deleted:
            raise self._state_error(job_id, "delete")

    def heartbeat(self, worker_id: str) -> int:
        """Mark the running jobs of ``worker_id`` as still alive (``updated_at`` = now); returns how many."""
        with self.engine.begin() as conn:
            return conn.execute(
                jobs.update()
                .where(jobs.c.state == JobState.running, jobs.c.worker_id == worker_id)
                .values(updated_at=utcnow())
            ).rowcount

    def running_workers(self) -> dict[str, datetime]:
        """The worker ids that hold running jobs, each with the earliest start of those jobs."""
        query = (
            sa.select(jobs.c.worker_id, sa.func.min(jobs.c.started_at))
            .where(jobs.c.state == JobState.running, jobs.c.worker_id.is_not(None))
            .group_by(jobs.c.worker_id)
        )
        with self.engine.connect() as conn:
            return {worker: started for worker, started in conn.execute(query)}  # min() keeps UTCDateTime

    def recover_interrupted(self, *, stale_before: datetime, worker_ids: set[str] = frozenset()) -> int:
        """Queue again the running jobs whose worker is gone; returns how many.

        Gone means: not updated (progress or heartbeat) since ``stale_before``, or held by one of
        ``worker_ids`` (known dead). A job whose cancel was requested is cancelled instead, and one interrupted
        on its last allowed attempt fails, so a study that crashes the process cannot loop forever.
        """
        now = utcnow()
        gone = jobs.c.updated_at < stale_before
        if worker_ids:
            gone = sa.or_(gone, jobs.c.worker_id.in_(sorted(worker_ids)))
        running = sa.and_(jobs.c.state == JobState.running, gone)
        common = {"worker_id": None, "updated_at": now}
        with self.engine.begin() as conn:
            conn.execute(
                jobs.update()
                .where(running, jobs.c.cancel_requested.is_(True))
                .values(state=JobState.cancelled, stage="cancelled", finished_at=now, **common)
            )
            conn.execute(
                jobs.update()
                .where(running, jobs.c.attempts >= jobs.c.max_attempts)
                .values(
                    state=JobState.failed,
                    stage="failed",
                    finished_at=now,
                    error=INTERRUPTED_PROBLEM,
                    **common,
                )
            )
            return conn.execute(
                jobs.update().where(running).values(state=JobState.queued, stage="queued", **common)
            ).rowcount
