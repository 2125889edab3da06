"""On-disk job layout with atomic publication.

::

    <data_dir>/staging/<random>/        uploads being written (same filesystem, so moves are renames)
    <data_dir>/jobs/<id>/input/         the accepted study, moved here before the job is acknowledged
    <data_dir>/jobs/<id>/work/          scratch of the current attempt, wiped when an attempt starts
    <data_dir>/jobs/<id>/output/        result.json + artifacts; appears in one rename of work/

``output/`` existing means the result is complete: it is created only by renaming a fully written and
fsynced ``work/``. That is what makes a crash between "result written" and "database updated" safe.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

RESULT_NAME = "result.json"
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_JOB_ID = re.compile(r"[0-9a-f]{32}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` (so a later rename never exposes unwritten data)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def validate_artifact_name(name: str) -> str:
    if not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"Invalid artifact name {name!r}: use only letters, digits, '.', '_' and '-' (no path separators)."
        )
    return name


class JobFiles:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.jobs_dir = self.data_dir / "jobs"
        self.staging_dir = self.data_dir / "staging"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)

    # --- layout ---------------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(f"Invalid job id {job_id!r}: expected 32 lowercase hexadecimal characters.")
        return self.jobs_dir / job_id

    def input_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "input"

    def work_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "work"

    def output_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "output"

    def result_path(self, job_id: str) -> Path:
        return self.output_dir(job_id) / RESULT_NAME

    def has_output(self, job_id: str) -> bool:
        return self.result_path(job_id).is_file()

    def job_ids(self) -> list[str]:
        return sorted(p.name for p in self.jobs_dir.iterdir() if _JOB_ID.fullmatch(p.name))

    # --- input ----------------------------------------------------------------------------------------

    def new_staging_dir(self) -> Path:
        """A fresh folder for an upload, on the same filesystem as the job folders."""
        return Path(tempfile.mkdtemp(prefix="upload-", dir=self.staging_dir))

    def stage_input(self, staging_dir: Path, job_id: str) -> Path:
        """Durably move a fully written staging folder to ``jobs/<id>/input`` in one rename."""
        staging_dir = Path(staging_dir)
        _fsync_tree(staging_dir)
        job_dir = self.job_dir(job_id)
        job_dir.mkdir()  # a job id is used once; an existing folder is a bug, not something to merge
        target = job_dir / "input"
        os.replace(staging_dir, target)
        _fsync_dir(job_dir)
        _fsync_dir(self.jobs_dir)
        _fsync_dir(staging_dir.parent)
        return target

    # --- attempts and results -------------------------------------------------------------------------

    def reset_work(self, job_id: str) -> Path:
        """Wipe and recreate the scratch folder of a new attempt."""
        work = self.work_dir(job_id)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        return work

    def discard_work(self, job_id: str) -> None:
        shutil.rmtree(self.work_dir(job_id), ignore_errors=True)

    def publish(self, job_id: str, result_json: str) -> Path:
        """Write result.json into work/, flush everything, then rename work/ to output/ (the commit point)."""
        work = self.work_dir(job_id)
        tmp = work / f".{RESULT_NAME}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(result_json)
        os.replace(tmp, work / RESULT_NAME)
        _fsync_tree(work)
        output = self.output_dir(job_id)
        os.rename(work, output)  # fails if output/ exists: a result is never produced twice
        _fsync_dir(self.job_dir(job_id))
        return output / RESULT_NAME

    def artifact_path(self, job_id: str, name: str) -> Path:
        """Path of a published artifact; ValueError for an unsafe name, FileNotFoundError if absent."""
        path = self.output_dir(job_id) / validate_artifact_name(name)
        if not path.is_file():
            raise FileNotFoundError(f"Job {job_id} has no artifact named {name!r}.")
        return path

    def list_artifacts(self, job_id: str) -> list[str]:
        """Names of published files other than result.json (empty until the job succeeded)."""
        output = self.output_dir(job_id)
        if not output.is_dir():
            return []
        return sorted(p.name for p in output.iterdir() if p.is_file() and p.name != RESULT_NAME)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    # --- start-up hygiene -----------------------------------------------------------------------------

    def cleanup_staging(self, older_than_s: float) -> int:
        """Remove upload folders abandoned by a crash (older than ``older_than_s``); returns how many."""
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self.staging_dir.iterdir():
            if path.stat().st_mtime < cutoff:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed += 1
        return removed

    def age_s(self, job_id: str) -> float:
        return time.time() - self.job_dir(job_id).stat().st_mtime
