"""Process-level durability: kill -9 a worker process mid-job, start another, every job finishes once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from inference.jobs.files import JobFiles
from inference.jobs.store import JobState, JobStore

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("crash_worker.py")


def _spawn(data_dir: Path, url: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, str(SCRIPT), str(data_dir), url], env=env)


def _executions(data_dir: Path) -> list[tuple[str, int]]:
    log = data_dir / "executions.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [(job_id, int(pid)) for job_id, pid in (line.split() for line in lines)]


def test_kill_9_mid_job_then_restart_finishes_every_job_exactly_once(
    store: JobStore, tmp_path: Path, stage_study, wait_for
) -> None:
    data_dir = tmp_path / "data"
    files = JobFiles(data_dir)
    job_ids = [stage_study(files, store) for _ in range(3)]
    url = store.engine.url.render_as_string(hide_password=False)

    first = _spawn(data_dir, url)
    try:
        # Wait until the first process is inside a job (it has reported progress), then kill it hard.
        victim = wait_for(
            lambda: next((j for j in store.list(state=JobState.running)[0] if j.progress > 0), None)
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert first.returncode == -signal.SIGKILL
    assert store.get(victim.id).state is JobState.running  # nobody recorded the interruption
    finished_before = {j for j in job_ids if store.get(j).state is JobState.succeeded}

    second = _spawn(data_dir, url)
    try:
        wait_for(lambda: store.count(JobState.succeeded) == len(job_ids), timeout=30)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(15)
    assert second.returncode == 0

    executions = _executions(data_dir)
    runs = Counter(job_id for job_id, _ in executions)
    for job_id in job_ids:
        job = store.get(job_id)
        assert job.state is JobState.succeeded
        assert sorted(p.name for p in files.job_dir(job_id).iterdir()) == ["input", "output"]
        report_pid = json.loads(files.result_path(job_id).read_text())["pid"]
        expected_pid = first.pid if job_id in finished_before else second.pid
        assert report_pid == expected_pid
    # The killed job ran once in each process and was published once, by the second; others ran once.
    assert runs[victim.id] == 2 and store.get(victim.id).attempts == 2
    assert all(runs[j] == 1 for j in job_ids if j != victim.id)
    assert {pid for job_id, pid in executions if job_id == victim.id} == {first.pid, second.pid}


@pytest.fixture(autouse=True)
def _posix_only() -> None:
    if os.name != "posix":
        pytest.skip("kill -9 semantics need POSIX signals")
