"""Hostile or broken uploads: each is answered with a 4xx problem while the server stays healthy and a job
accepted earlier keeps its result. (dicom_io implements the checks; this tests them over HTTP.)"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian

from api.config import Settings
from api.main import create_app
from dicom_io.synthetic import write_ct_series
from tests.api.conftest import api_keys_setting, auth, ct_hu, multipart, wait_finished, wait_ready
from tests.api.test_errors import assert_problem

MAX_UPLOAD = 4 * 1024 * 1024
MAX_INFLATED = 8 * 1024 * 1024


def _one_slice(tmp: Path, **tags: object) -> Path:
    return write_ct_series(ct_hu(1, 16), tmp, tags=tags or None)[0]


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_bomb(_: Path) -> tuple[str, bytes]:
    return "bomb.zip", _zip({"slice.dcm": bytes(64 * 1024 * 1024)})


def zip_slip(tmp: Path) -> tuple[str, bytes]:
    return "slip.zip", _zip({"../../evil.dcm": _one_slice(tmp).read_bytes()})


def huge_matrix(tmp: Path) -> tuple[str, bytes]:
    ds = pydicom.dcmread(_one_slice(tmp))
    ds.Rows = ds.Columns = 65535
    out = tmp / "huge.dcm"
    ds.save_as(out)
    return "huge.dcm", out.read_bytes()


def deflate_bomb(tmp: Path) -> tuple[str, bytes]:
    """A deflated-transfer-syntax file whose dataset inflates far beyond the configured bound."""
    ds = pydicom.dcmread(_one_slice(tmp))
    meta = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    pydicom.filewriter.write_file_meta_info(meta, ds.file_meta)
    head = b"\x00" * 128 + b"DICM" + meta.getvalue()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    # (0009,0010) private creator, then (0009,1010) OB of 64 MiB of zeros, all before PixelData.
    body = compressor.compress(b"\x09\x00\x10\x00LO\x06\x00TEST  ")
    body += compressor.compress(b"\x09\x00\x10\x10OB\x00\x00" + struct.pack("<I", 64 * 1024 * 1024))
    chunk = bytes(1024 * 1024)
    for _ in range(64):
        body += compressor.compress(chunk)
    return "deflated.dcm", head + body + compressor.flush()


def deep_nesting(tmp: Path) -> tuple[str, bytes]:
    ds = pydicom.dcmread(_one_slice(tmp))
    inner = Dataset()
    inner.CodeValue = "1"
    for _ in range(40):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    ds.ContentSequence = inner.ContentSequence
    out = tmp / "deep.dcm"
    ds.save_as(out)
    return "deep.dcm", out.read_bytes()


def no_file_meta(tmp: Path) -> tuple[str, bytes]:
    ds = pydicom.dcmread(_one_slice(tmp))
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(out, ds)  # dataset only: no preamble, no DICM, no file meta
    return "nometa.dcm", out.getvalue()


def pydicom_file(name: str) -> Callable[[Path], tuple[str, bytes]]:
    return lambda _: (name, Path(get_testdata_file(name)).read_bytes())


BAD_INPUTS = [
    pytest.param(lambda _: ("notes.txt", b"this is not DICOM\n" * 50), 415, "DICM", id="non-dicom-bytes"),
    pytest.param(lambda _: ("empty.dcm", b""), 415, "empty", id="empty-file"),
    pytest.param(pydicom_file("MR_truncated.dcm"), 422, "truncated", id="truncated-pixel-data"),
    pytest.param(no_file_meta, 415, "file meta", id="no-file-meta"),
    pytest.param(zip_bomb, 422, "zip bomb", id="zip-bomb"),
    pytest.param(zip_slip, 422, "..", id="zip-path-traversal"),
    pytest.param(huge_matrix, 413, "Rows = 65535", id="rows-columns-65535"),
    pytest.param(deflate_bomb, 413, "deflate", id="deflate-bomb"),
    pytest.param(deep_nesting, 413, "nested", id="deep-sequence-nesting"),
]


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[tuple[TestClient, str]]:
    """One app for the whole table, with a job that succeeded before any bad input arrived."""
    tmp = tmp_path_factory.mktemp("bad-input")
    settings = Settings(
        data_dir=tmp / "data", models_dir=models_dir, bundled_models=False, device="cpu",
        api_keys=api_keys_setting(), max_upload_bytes=MAX_UPLOAD, max_inflated_bytes=MAX_INFLATED,
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        good = write_ct_series(ct_hu(), tmp / "good")
        job_id = client.post("/v1/studies", files=multipart(good), headers=auth("submit")).json()["job_id"]
        assert wait_finished(client, job_id)["state"] == "succeeded"
        yield client, job_id


@pytest.mark.parametrize(("make", "status", "says"), BAD_INPUTS)
def test_bad_input_is_a_4xx_problem_and_the_server_stays_healthy(
    hardened: tuple[TestClient, str],
    tmp_path: Path,
    make: Callable[[Path], tuple[str, bytes]],
    status: int,
    says: str,
) -> None:
    client, earlier_job = hardened
    before = client.get(f"/v1/jobs/{earlier_job}/result", headers=auth("read")).json()
    name, data = make(tmp_path)
    response = client.post("/v1/studies", files=[("file", (name, data, "application/octet-stream"))],
                           headers=auth("submit"))
    body = assert_problem(response, status)
    assert says in body["detail"] and name in body["detail"], body
    assert client.get("/healthz").status_code == 200
    assert client.get(f"/v1/jobs/{earlier_job}/result", headers=auth("read")).json() == before
    jobs = client.get("/v1/jobs", headers=auth("read")).json()
    assert jobs["total"] == 1, "a rejected upload must not create a job"


def test_upload_over_the_size_limit_is_413(hardened: tuple[TestClient, str]) -> None:
    client, _ = hardened
    response = client.post("/v1/studies", content=bytes(MAX_UPLOAD + 1),
                           headers={**auth("submit"), "Content-Type": "application/zip"})
    assert "RADINFER_MAX_UPLOAD_BYTES" in assert_problem(response, 413)["detail"]


def test_streamed_upload_without_length_over_the_limit_is_413(hardened: tuple[TestClient, str]) -> None:
    client, _ = hardened

    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_UPLOAD // 65536 + 2):
            yield bytes(65536)

    response = client.post("/v1/studies", content=chunks(), headers={**auth("submit"), "Content-Type": "application/zip"})
    assert_problem(response, 413)


def test_rejected_uploads_leave_no_staging_files(hardened: tuple[TestClient, str]) -> None:
    client, _ = hardened
    staging = client.app.state.services.files.staging_dir
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_json_routes_refuse_a_body_over_a_mebibyte(client: TestClient, chunked: bool) -> None:
    """FastAPI reads a JSON body into memory: other routes than the study uploads take at most 1 MiB."""
    body = b'{"model": "' + b"x" * (2 << 20) + b'"}'
    content = iter([body[i:i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    response = client.post("/v1/evaluations", content=content, headers={**auth("admin"),
                                                                       "Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "1048576 bytes" in response.json()["detail"] and response.json()["request_id"]
    small = client.post("/v1/evaluations", json={"model": "x"}, headers=auth("admin"))
    assert small.status_code in (403, 422)  # reaches the route: evaluations are off in this app


def test_a_body_sent_as_zip_that_is_not_a_zip_is_told_so(client: TestClient, ct_study: Callable) -> None:
    response = client.post("/v1/studies", content=ct_study()[0].read_bytes(),
                           headers={**auth("submit"), "Content-Type": "application/zip"})
    assert response.status_code == 415, response.text
    assert "sent as application/zip but is not a zip archive" in response.json()["detail"]
