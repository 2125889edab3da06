"""``radinfer serve`` in a subprocess for the HTTP benchmarks: 127.0.0.1, a free port, a temporary data dir,
an API key from the environment, only the given models folder; stopped (terminate, then kill) when the block
ends, whatever happens."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180.0


class Server:
    """``radinfer serve`` in a subprocess; stopped (terminate, then kill) when the block ends."""

    def __init__(self, models: Path, data: Path, *, threads: int, workers: int, device: str = "cpu") -> None:
        self.key = secrets.token_hex(16)
        self.headers = {"Authorization": f"Bearer {self.key}"}
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data.parent / f"{data.name}.log"
        self.env = os.environ | {
            "RADINFER_HOST": "127.0.0.1",
            "RADINFER_PORT": str(self.port),
            "RADINFER_DATA_DIR": str(data),
            "RADINFER_MODELS_DIR": str(models),
            "RADINFER_BUNDLED_MODELS": "false",
            "RADINFER_DEVICE": device,
            "RADINFER_WORKERS": str(workers),
            "RADINFER_MAX_QUEUED_JOBS": "1000",
            "RADINFER_API_KEYS": f"admin:{self.key}",
            "RADINFER_LOG_LEVEL": "WARNING",
            "OMP_NUM_THREADS": str(threads),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        import httpx

        command = [sys.executable, "-c", "from api.cli import app; app()", "serve"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"radinfer serve exited with {self.process.returncode}: {self._tail()}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=2)
            except httpx.HTTPError:
                ready = None
            if ready is not None and ready.status_code == 200:
                return self
            if ready is not None and ready.json().get("error"):
                self.__exit__(None, None, None)
                raise RuntimeError(f"radinfer serve could not load its model: {ready.json()['error']}")
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise RuntimeError(f"radinfer serve was not ready within {START_TIMEOUT_S} s: {self._tail()}")

    def __exit__(self, *exc: object) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def last_job_timings(self) -> dict[str, float]:
        """Stage seconds of the newest job, as ``GET /v1/jobs`` reports them (where a request's time goes)."""
        import httpx

        page = httpx.get(f"{self.url}/v1/jobs", headers=self.headers, timeout=30).json()
        items = page.get("items") or []
        return dict(items[0].get("timings") or {}) if items else {}

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.is_file() else ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
