"""A real server process killed with SIGKILL mid-job: after a restart every accepted job finishes exactly once,
and nothing it logged in either life contains the patient's name or id."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from dicom_io.synthetic import write_ct_series
from tests.api.conftest import KEYS, api_keys_setting, write_test_bundle

CANARY_NAME = "Zqxcanary^Patience"
CANARY_ID = "PID-ZQX-314159"
CANARY_BIRTH = "19020304"
ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}
JOBS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``radinfer serve`` in a subprocess, output captured to files."""

    def __init__(self, env: dict[str, str], log_dir: Path, life: int) -> None:
        self.base = f"http://127.0.0.1:{env['RADINFER_PORT']}"
        self.stdout = open(log_dir / f"stdout-{life}.log", "wb")  # noqa: SIM115 - closed in kill()/stop()
        self.stderr = open(log_dir / f"stderr-{life}.log", "wb")  # noqa: SIM115 - closed in kill()/stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve"], env=env, stdout=self.stdout, stderr=self.stderr,
            stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[2],
        )

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited with {self.process.returncode}"
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not become ready")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.stdout.close()
        self.stderr.close()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
        self.stdout.close()
        self.stderr.close()


def wait_for(predicate, timeout: float = 180.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


@pytest.mark.slow
def test_sigkill_mid_job_then_restart_finishes_every_job_once_without_phi_in_logs(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_test_bundle(models, "slow_ct", overlap=0.75)  # ~4x the windows of 0.5: seconds per job
    env = {
        **os.environ,
        "RADINFER_PORT": str(free_port()),
        "RADINFER_DATA_DIR": str(tmp_path / "data"),
        "RADINFER_MODELS_DIR": str(models),
        "RADINFER_BUNDLED_MODELS": "false",
        "RADINFER_API_KEYS": api_keys_setting(),
        "RADINFER_DEVICE": "cpu",
        "RADINFER_LOG_LEVEL": "DEBUG",
        "PYTHONUNBUFFERED": "1",
    }
    hu = np.full((24, 48, 48), -800.0, dtype=np.float32)
    hu[8:16, 16:32, 16:32] = 200.0
    tags = {"PatientName": CANARY_NAME, "PatientID": CANARY_ID, "PatientBirthDate": CANARY_BIRTH}

    first = Server(env, tmp_path, 1)
    try:
        first.wait_ready()
        job_ids = []
        for n in range(JOBS):
            paths = write_ct_series(hu, tmp_path / f"study{n}", tags=tags)
            files = [("file", (f"{CANARY_NAME}-{CANARY_ID}-{p.name}", p.read_bytes(), "application/dicom"))
                     for p in paths]
            response = httpx.post(first.base + "/v1/studies", files=files, headers=ADMIN, timeout=60)
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["job_id"])

        def running() -> str | None:
            states = []
            for job_id in job_ids:
                job = httpx.get(f"{first.base}/v1/jobs/{job_id}", headers=ADMIN, timeout=10).json()
                if job["state"] == "running" and job["stage"] not in ("starting", "waiting for models"):
                    return job_id
                states.append(job["state"])
            assert not all(s == "succeeded" for s in states), "every job finished before one could be killed"
            return None

        interrupted = wait_for(running, interval=0.05)
    finally:
        first.kill()
    # The job may still publish its result between the last poll and the kill; then the restart must only record it.
    published_before_restart = (tmp_path / "data" / "jobs" / interrupted / "output").exists()

    second = Server(env, tmp_path, 2)
    try:
        second.wait_ready()

        def all_finished() -> list[dict] | None:
            jobs = [httpx.get(f"{second.base}/v1/jobs/{j}", headers=ADMIN, timeout=10).json() for j in job_ids]
            return jobs if all(j["state"] in ("succeeded", "failed", "cancelled") for j in jobs) else None

        jobs = wait_for(all_finished)
        results = [httpx.get(f"{second.base}/v1/jobs/{j}/result", headers=ADMIN, timeout=10) for j in job_ids]
    finally:
        second.stop()

    assert [j["state"] for j in jobs] == ["succeeded"] * JOBS, jobs
    by_id = {j["id"]: j for j in jobs}
    expected_attempts = 1 if published_before_restart else 2
    assert by_id[interrupted]["attempts"] == expected_attempts, (
        "an interrupted job runs once more after the restart; one already published is only recorded"
    )
    for job_id, result in zip(job_ids, results):
        assert result.status_code == 200 and result.json()["study_instance_uid"] == by_id[job_id]["study_instance_uid"]
        job_dir = tmp_path / "data" / "jobs" / job_id
        assert sorted(p.name for p in job_dir.iterdir()) == ["input", "output"], "one published result, no leftovers"
        assert (job_dir / "output" / "result.json").is_file()

    logs = "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("std*.log")))
    assert "queued for model slow_ct" in logs, "the server's log lines were captured"
    for canary in ("Zqxcanary", "ZQX-314159", CANARY_BIRTH):
        assert canary.lower() not in logs.lower(), f"{canary} leaked into the server output"
