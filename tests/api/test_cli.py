"""The radinfer command line: models and infer (no server); serve is exercised by the durability test."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app


@contextmanager
def socket_port() -> Iterator[int]:
    """A free TCP port on 127.0.0.1 (bound while the block runs)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield probe.getsockname()[1]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, models_dir: Path) -> None:
    monkeypatch.setenv("RADINFER_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("RADINFER_BUNDLED_MODELS", "false")


def test_models_json_lists_name_version_task_hash_device(env: None) -> None:
    result = CliRunner().invoke(app, ["models", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["name"], row["version"], row["task"], row["device"]) == ("tiny_ct", "0.0.1", "segmentation", "cpu")
    assert len(row["sha256"]) == 64


def test_models_accepts_the_device_list_serve_accepts(env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """RADINFER_DEVICE=cuda:0,cuda:1 configures serve; the other commands must not call it an unknown device."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    result = CliRunner().invoke(app, ["models", "--json", "--device", "cuda:0,cuda:1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["device"] == "cuda:0, cuda:1"


def test_serve_on_a_busy_port_exits_2_before_loading_anything(env: None, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setenv("RADINFER_DATA_DIR", str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output
    assert not (tmp_path / "radinfer.db").exists()  # nothing started: no job store, no models


def test_serve_with_an_unreachable_database_exits_2_in_one_line(env: None, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with socket_port() as closed, socket_port() as free:
        pass  # both closed again: nothing listens on the database's port, and serve may bind the other
    monkeypatch.setenv("RADINFER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RADINFER_DATABASE_URL", f"postgresql+psycopg://u:p@127.0.0.1:{closed}/radinfer")
    result = CliRunner().invoke(app, ["serve", "--port", str(free)])
    assert result.exit_code == 2, result.output
    assert "RADINFER_DATABASE_URL: cannot open the job store" in result.output
    assert "Traceback" not in result.output


def test_models_table_shows_the_bundle(env: None) -> None:
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0 and "tiny_ct" in result.stdout


def test_infer_prints_findings_json_and_writes_artifacts(env: None, ct_study: Callable, tmp_path: Path) -> None:
    folder = ct_study()[0].parent
    out = tmp_path / "artifacts"
    result = CliRunner().invoke(app, ["infer", str(folder), "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"]["name"] == "tiny_ct" and report["series"][0]["num_instances"] == 8
    assert report["artifacts"] and all((out / a["name"]).is_file() for a in report["artifacts"])
    assert "inference" in result.stderr


def test_infer_on_a_non_dicom_file_exits_2_with_the_reason(env: None, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not dicom" * 10)
    result = CliRunner().invoke(app, ["infer", str(junk)])
    assert result.exit_code == 2 and "junk.bin" in result.stderr and result.stdout == ""


def test_bad_setting_exits_2_naming_the_variable(env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADINFER_WORKERS", "zero")
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 2 and "RADINFER_WORKERS" in result.stderr


def test_serve_on_a_public_host_without_keys_exits_2(
    env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RADINFER_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("RADINFER_API_KEYS", raising=False)
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "RADINFER_API_KEYS" in result.stderr


def test_export_onnx_writes_the_file_and_reports_agreement(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.api.conftest import write_test_bundle

    write_test_bundle(tmp_path / "bundles")
    monkeypatch.setenv("RADINFER_MODELS_DIR", str(tmp_path / "bundles"))
    monkeypatch.setenv("RADINFER_BUNDLED_MODELS", "false")
    result = CliRunner().invoke(app, ["export-onnx", "tiny_ct"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert Path(report["path"]).is_file() and report["max_scaled_diff"] <= report["tolerance"]
    assert report["max_scaled_diff"] <= report["max_abs_diff"]  # scaled by max(1, max |torch|)
    assert "max |onnx - torch|" in result.stderr and "of the output scale" in result.stderr


def test_export_onnx_of_an_unknown_model_exits_2_naming_it(env: None) -> None:
    result = CliRunner().invoke(app, ["export-onnx", "tiny_cx"])
    assert result.exit_code == 2 and "tiny_cx" in result.stderr


def test_serve_gives_uvicorn_the_head_deadline_and_keeps_its_files_private(env: None, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from api.http_protocol import HeaderTimeoutProtocol

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda application, **options: seen.update(options))
    monkeypatch.setenv("RADINFER_DATA_DIR", str(tmp_path / "data"))
    with socket_port() as free:
        pass
    previous = os.umask(0o022)
    try:
        result = CliRunner().invoke(app, ["serve", "--port", str(free)])
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert seen["http"] is HeaderTimeoutProtocol and seen["port"] == free
    # PHI lives under the data folder: only the service's user may read it
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "data" / "radinfer.db").stat().st_mode) == 0o600
