"""No PHI in logs: the filter's guarantees, and a canary study pushed through the running app."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pydicom
import pytest
from fastapi.testclient import TestClient

from api.logging import REDACTED, PhiFilter, configure_logging, redact, sanitize_filename
from tests.api.conftest import auth, multipart, wait_finished

CANARY_NAME = "Qxcanary^Phileas"
CANARY_ID = "PID-QX-271828"
CANARIES = ("qxcanary", "qx-271828")


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        pytest.param("../../etc/passwd", "passwd", id="path-stripped"),
        pytest.param("C:\\scans\\slice 1.dcm", "slice_1.dcm", id="windows-path-and-space"),
        pytest.param("bad\x00name\n.dcm", "bad_name_.dcm", id="control-characters"),
        pytest.param("a" * 200, "a" * 64, id="bounded-length"),
        pytest.param(None, "", id="none"),
    ],
)
def test_sanitize_filename(raw: str | None, safe: str) -> None:
    assert sanitize_filename(raw) == safe


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("(0010, 0010) Patient's Name  PN: 'Qxcanary^Phileas'", id="element-repr"),
        pytest.param("PatientID=PID-QX-271828 rejected", id="keyword-pair"),
        pytest.param("PatientName: 'Qxcanary^Phileas'", id="keyword-colon-quoted"),
    ],
)
def test_redact_removes_patient_values(text: str) -> None:
    assert not any(c in redact(text).lower() for c in CANARIES)


def test_redact_removes_the_values_pydicom_and_highdicom_quote() -> None:
    """pydicom names no element when it warns about or fails on a value, so any quoted value may be a patient's."""
    from pydicom.valuerep import DA, validate_value

    with pytest.raises(ValueError) as conversion:
        DA("Qxcanary^Phileas")
    with pytest.warns(UserWarning) as warned:
        validate_value("IS", "PID-QX-271828", 1)
    from highdicom.valuerep import check_person_name

    with pytest.warns(UserWarning) as unlikely:
        check_person_name("Qxcanary Phileas")  # highdicom, on every result of a study with such a name
    for text in (str(conversion.value), str(warned[0].message), "Unable to convert non-conformant value 'qxcanary'",
                 str(unlikely[0].message)):
        assert not any(c in redact(text).lower() for c in CANARIES), redact(text)
        assert REDACTED in redact(text)


def test_filter_replaces_dataset_arguments(ct_study: Callable) -> None:
    ds = pydicom.dcmread(ct_study(tags={"PatientName": CANARY_NAME, "PatientID": CANARY_ID})[0])
    record = logging.makeLogRecord({"msg": "got %s and %r", "args": (ds, ds["PatientName"])})
    PhiFilter().filter(record)
    assert not any(c in record.getMessage().lower() for c in CANARIES)
    assert "redacted" in record.getMessage()


@pytest.mark.parametrize("name", [CANARY_NAME, CANARY_NAME.replace("^", " ")], ids=["two-components", "one-component"])
def test_canary_study_leaves_no_phi_in_any_log_record(
    client: TestClient, ct_study: Callable, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture, name: str
) -> None:
    """A one-component name ("John Smith") makes highdicom warn, quoting it, on every result it writes."""
    configure_logging("DEBUG")
    caplog.set_level(logging.DEBUG)
    tags = {"PatientName": name, "PatientID": CANARY_ID}
    paths = ct_study(tags=tags)
    files = [("file", (f"{CANARY_NAME}_{p.name}", p.read_bytes(), "application/dicom")) for p in paths]
    job_id = client.post("/v1/studies", files=files, headers=auth("submit")).json()["job_id"]
    assert wait_finished(client, job_id)["state"] == "succeeded"
    rejected = client.post("/v1/studies", files=multipart(ct_study(slices=1, tags=tags)), headers=auth("submit"))
    assert rejected.status_code == 422
    logging.getLogger("radinfer.test").error("dataset dump %s", pydicom.dcmread(paths[0]))
    logging.getLogger("radinfer.test").warning("PatientName=%s", CANARY_NAME)

    captured = capfd.readouterr()
    lines = [r.getMessage() for r in caplog.records] + captured.err.splitlines() + captured.out.splitlines()
    assert any(job_id in line for line in lines), "the job's log lines were captured"
    leaks = [line for line in lines if any(c in line.lower() for c in CANARIES)]
    assert leaks == []


def test_warnings_become_json_records_and_highdicom_chatter_is_quiet() -> None:
    import io
    import json
    import warnings

    logging.captureWarnings(False)  # pytest restored warnings.showwarning after an earlier test's capture
    configure_logging("INFO")
    (handler,) = [h for h in logging.getLogger().handlers if getattr(h, "_radinfer", False)]
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        logging.getLogger("highdicom.base").info("copy Patient-related attributes from dataset 1.2.3")
        # what warnings.warn ends in once its filters let a warning through (pytest records them before that)
        warnings.showwarning("a library's deprecation notice", FutureWarning, "library.py", 1)
    finally:
        handler.setStream(previous)
        logging.captureWarnings(False)
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    assert lines and all(json.loads(line) for line in lines)  # every line is a JSON record
    text = "\n".join(lines)
    assert "deprecation notice" in text and "copy Patient-related" not in text


def test_access_log_says_who_asked_for_what(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """An audit trail: the client's address, the key's role and id, the job touched; never a study UID."""
    caplog.set_level(logging.INFO, logger="radinfer.access")
    job = "ab" * 16
    client.get(f"/v1/jobs/{job}/artifacts/seg.dcm", headers=auth("read"))
    client.get(f"/v1/jobs/{job}", headers=auth("read"))
    client.get("/v1/jobs", headers={"Authorization": "Bearer not-a-valid-key-at-all"})
    client.post("/dicomweb/studies/1.2.826.0.1.3680043.8.498.1", headers=auth("read"))
    lines = [r for r in caplog.records if r.name == "radinfer.access" and "/readyz" not in r.getMessage()]
    artifact, read, anonymous, stow = lines[-4:]
    assert (artifact.job_id, artifact.artifact) == (job, "seg.dcm")
    assert read.getMessage().startswith("GET /v1/jobs/{job_id} 404")
    assert (read.job_id, read.role, read.client) == (job, "read", "testclient") and len(read.key_id) == 8
    assert anonymous.getMessage().startswith("GET /v1/jobs 401") and not hasattr(anonymous, "role")
    assert anonymous.client == "testclient"
    assert stow.getMessage().startswith("POST /dicomweb/studies/{study} 403")
    assert "1.2.826.0.1.3680043.8.498.1" not in str(vars(stow))
