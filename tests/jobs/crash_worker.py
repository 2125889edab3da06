"""A worker process for the kill -9 test: ``python crash_worker.py DATA_DIR STORE_URL``.

Each execution appends ``<job id> <pid>`` to ``DATA_DIR/executions.log`` when it starts, then works slowly
(reporting progress) so the test can kill the process mid-job.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from pydantic import BaseModel

from inference.jobs.files import JobFiles
from inference.jobs.store import JobRecord, JobStore
from inference.jobs.worker import Progress, Worker


class CrashReport(BaseModel):
    job_id: str
    pid: int


def main(data_dir: Path, url: str) -> None:
    log_path = data_dir / "executions.log"

    def execute(job: JobRecord, input_dir: Path, work_dir: Path, progress: Progress) -> CrashReport:
        with open(log_path, "a") as log:
            log.write(f"{job.id} {os.getpid()}\n")
        for step in range(8):
            progress("inference", step / 8)
            time.sleep(0.05)
        return CrashReport(job_id=job.id, pid=os.getpid())

    worker = Worker(JobStore(url), JobFiles(data_dir), execute, poll_interval_s=0.05, progress_throttle_s=0.0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker.start()
    stop.wait()
    worker.stop(timeout=10)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
