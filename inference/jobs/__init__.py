"""Durable jobs: a SQL job store, the on-disk job layout, and the worker threads that run jobs.

Accepting a study (the API's order of operations)::

    ensure_capacity(store, max_queued)          # 503 + Retry-After when full
    staging = files.new_staging_dir()           # write the upload here
    files.stage_input(staging, job_id)          # one durable rename to jobs/<id>/input
    store.create(job_id=job_id, max_queued=max_queued, ...)  # atomic capacity check; committed before 202
    worker.wake()
"""

from inference.jobs.files import JobFiles
from inference.jobs.store import JobRecord, JobState, JobStore, sqlite_url
from inference.jobs.worker import Worker, ensure_capacity

__all__ = ["JobFiles", "JobRecord", "JobState", "JobStore", "Worker", "ensure_capacity", "sqlite_url"]
