"""JobFiles: atomic staging and publication, artifact name validation, orphan cleanup."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from inference.jobs.files import JobFiles


def _staged(files: JobFiles) -> tuple[str, Path]:
    staging = files.new_staging_dir()
    (staging / "a.dcm").write_bytes(b"x" * 10)
    (staging / "sub").mkdir()
    (staging / "sub" / "b.dcm").write_bytes(b"y" * 5)
    job_id = uuid.uuid4().hex
    return job_id, files.stage_input(staging, job_id)


def test_stage_input_moves_whole_folder_and_leaves_no_staging(files: JobFiles) -> None:
    job_id, input_dir = _staged(files)
    assert input_dir == files.input_dir(job_id)
    assert (input_dir / "a.dcm").read_bytes() == b"x" * 10
    assert (input_dir / "sub" / "b.dcm").read_bytes() == b"y" * 5
    assert list(files.staging_dir.iterdir()) == []
    assert files.job_ids() == [job_id]


def test_stage_input_refuses_reused_job_id(files: JobFiles) -> None:
    job_id, _ = _staged(files)
    staging = files.new_staging_dir()
    with pytest.raises(FileExistsError):
        files.stage_input(staging, job_id)


@pytest.mark.parametrize(
    "job_id", ["../etc", "ABC", "0" * 31, "0" * 32 + "/x"], ids=["traversal", "upper", "short", "slash"]
)
def test_job_dir_rejects_malformed_ids(files: JobFiles, job_id: str) -> None:
    with pytest.raises(ValueError, match="Invalid job id"):
        files.job_dir(job_id)


def test_publish_renames_work_to_output_with_result_and_artifacts(files: JobFiles) -> None:
    job_id, _ = _staged(files)
    work = files.reset_work(job_id)
    (work / "seg.dcm").write_bytes(b"seg")
    assert not files.has_output(job_id) and files.list_artifacts(job_id) == []
    result = files.publish(job_id, '{"ok": true}')
    assert result == files.result_path(job_id) and result.read_text() == '{"ok": true}'
    assert not work.exists()
    assert files.list_artifacts(job_id) == ["seg.dcm"]
    assert files.artifact_path(job_id, "seg.dcm").read_bytes() == b"seg"


def test_publish_twice_fails_instead_of_overwriting(files: JobFiles) -> None:
    job_id, _ = _staged(files)
    files.reset_work(job_id)
    files.publish(job_id, "first")
    files.reset_work(job_id)
    with pytest.raises(OSError):
        files.publish(job_id, "second")
    assert files.result_path(job_id).read_text() == "first"


def test_reset_work_wipes_previous_attempt(files: JobFiles) -> None:
    job_id, _ = _staged(files)
    (files.reset_work(job_id) / "partial.bin").write_bytes(b"half")
    assert list(files.reset_work(job_id).iterdir()) == []


@pytest.mark.parametrize(
    "name",
    ["../result.json", "a/b.dcm", "..", ".", "x\x00y", "", "seg dcm"],
    ids=["dotdot", "slash", "up", "dot", "nul", "empty", "space"],
)
def test_artifact_path_rejects_unsafe_names(files: JobFiles, name: str) -> None:
    job_id, _ = _staged(files)
    with pytest.raises(ValueError, match="Invalid artifact name"):
        files.artifact_path(job_id, name)


def test_artifact_path_of_missing_file_raises_not_found(files: JobFiles) -> None:
    job_id, _ = _staged(files)
    with pytest.raises(FileNotFoundError, match="no artifact named"):
        files.artifact_path(job_id, "missing.dcm")


def test_cleanup_staging_removes_only_old_folders(files: JobFiles) -> None:
    old, fresh = files.new_staging_dir(), files.new_staging_dir()
    (old / "partial.dcm").write_bytes(b"p")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert files.cleanup_staging(older_than_s=600) == 1
    assert not old.exists() and fresh.exists()


def test_remove_deletes_job_folder(files: JobFiles) -> None:
    job_id, _ = _staged(files)
    files.remove(job_id)
    assert files.job_ids() == []
