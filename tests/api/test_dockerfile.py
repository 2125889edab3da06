"""The Dockerfile, checked without a Docker engine: hadolint, non-root user, health check (run against a server),
port, and the Makefile's install order (torch pinned to the same version first, then the project with the gpu
extra)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def makefile_torch_version() -> str:
    match = re.search(r"^TORCH_VERSION\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile pins TORCH_VERSION"
    return match.group(1)


def pip_installs() -> list[list[str]]:
    """The argument lists of every `pip install` in RUN lines, in order."""
    installs = []
    for keyword, rest in instructions():
        if keyword == "RUN":
            for command in rest.split("&&"):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"]:
                    installs.append(words[2:])
    return installs


def test_dockerfile_runs_as_a_non_root_user_after_installing() -> None:
    steps = instructions()
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    last_user = max(i for i, (k, _) in enumerate(steps) if k == "USER")
    last_run = max(i for i, (k, _) in enumerate(steps) if k == "RUN")
    assert last_run < last_user


def test_dockerfile_has_a_cuda_13_base_healthcheck_and_port() -> None:
    """NVIDIA's CUDA image, whose CUDA major version is torch 2.13's (its PyPI wheel depends on CUDA 13 wheels)."""
    steps = dict(instructions())
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-(base|runtime|cudnn-runtime)-ubuntu\d\d\.04", steps["FROM"])
    assert "/healthz" in steps["HEALTHCHECK"]
    assert steps["EXPOSE"] == "8000"
    assert "radinfer" in steps["CMD"] and "serve" in steps["CMD"]


def test_dockerfile_installs_like_the_makefile() -> None:
    args = dict(instructions())["ARG"]
    assert args == f"TORCH_VERSION={makefile_torch_version()}"
    installs = pip_installs()
    assert installs[0] == ["torch==${TORCH_VERSION}"], "torch is installed first, pinned"
    assert installs[1] == ["-e", ".[gpu]"], "then the project with the gpu extra"
    assert len(installs) == 2


def test_makefile_installs_torch_first_then_the_project() -> None:
    makefile = (ROOT / "Makefile").read_text()
    torch_at = makefile.index('pip install "torch==$(TORCH_VERSION)"')
    project_at = makefile.index("pip install -e '.[dev,cpu,postgres]'")
    assert torch_at < project_at


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_passes_only_on_a_healthy_server(status: int, healthy: bool) -> None:
    """The HEALTHCHECK's exec form, run as Docker would run it, against a server on RADINFER_PORT."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    (check,) = re.findall(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", text, re.MULTILINE)
    argv = json.loads(check)
    assert argv[0] == "python3"
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = os.environ | {"RADINFER_PORT": str(server.server_address[1])}
        result = subprocess.run([sys.executable, *argv[1:]], check=False, env=env, capture_output=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert paths == ["/healthz"]
    assert (result.returncode == 0) is healthy
