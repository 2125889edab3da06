"""The Dockerfile, checked without a Docker engine: non-root user, health check, port, and the Makefile's install
order (torch pinned to the same version first, then the project with the gpu extra)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

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


def test_dockerfile_has_cuda_base_healthcheck_and_port() -> None:
    steps = dict(instructions())
    assert "nvidia/cuda" in steps["FROM"] and "runtime" in steps["FROM"]
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
