"""STOW-RS: the bounded multipart/related parser, per-instance storage and the Store Instances Response."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pydicom
import pytest

from dicom_io.errors import LimitExceededError, UnsupportedInputError
from dicom_io.limits import Limits
from dicom_io.network.instances import CANNOT_UNDERSTAND, ReceivedInstance
from dicom_io.network.stow import (
    NATIVE_DICOM_NS,
    MalformedMultipartError,
    MultipartRelatedParser,
    StowLimits,
    response_status,
    store_instances_response,
    store_parts,
    to_dicom_json,
    to_dicom_xml,
)
from tests.network.conftest import multipart_related

DEFAULT_LIMITS = StowLimits()


def parse(body: bytes, ctype: str, out: Path, limits: StowLimits = DEFAULT_LIMITS, chunk: int = 7) -> list[Path]:
    out.mkdir(exist_ok=True)
    parser = MultipartRelatedParser(ctype, out, limits)
    for start in range(0, len(body), chunk):
        parser.feed(body[start : start + chunk])
    return parser.close()


@pytest.mark.parametrize("chunk", [1, 7, 4096, 10**9], ids=["1-byte", "7-bytes", "4KiB", "whole-body"])
def test_parser_writes_each_dicom_part_byte_exact_at_any_chunking(tmp_path: Path, study: list[Path], chunk: int) -> None:
    originals = [p.read_bytes() for p in study]
    body, ctype = multipart_related(originals)
    parts = parse(b"preamble to ignore\r\n" + body + b"epilogue", ctype, tmp_path / "out", chunk=chunk)
    assert [p.read_bytes() for p in parts] == originals


def test_parser_keeps_a_part_containing_boundary_like_bytes(tmp_path: Path) -> None:
    # A delimiter is CRLF + "--" + boundary; a prefix of it, or the boundary without the CRLF, is content.
    tricky = [b"\r\n--radinfer-test-boundarX\r\n-" * 3 + b"\r\n--radinfer-test-boun", b"x--radinfer-test-boundary"]
    body, ctype = multipart_related(tricky)
    assert [p.read_bytes() for p in parse(body, ctype, tmp_path / "out", chunk=5)] == tricky


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (StowLimits(max_parts=3), "more than 3 parts"),
        (StowLimits(max_part_bytes=1000), "part 1 is larger than 1000 bytes"),
        (StowLimits(max_total_bytes=5000), "larger than 5000 bytes"),
    ],
    ids=["part-count", "part-size", "total-size"],
)
def test_parser_limits_raise_413_with_a_clear_message(tmp_path: Path, study: list[Path], limits, message) -> None:
    body, ctype = multipart_related([p.read_bytes() for p in study])
    with pytest.raises(LimitExceededError, match=message) as info:
        parse(body, ctype, tmp_path / "out", limits, chunk=4096)
    assert info.value.status == 413


@pytest.mark.parametrize(
    ("ctype", "error"),
    [
        ("multipart/form-data; boundary=x", UnsupportedInputError),
        ('multipart/related; type="application/dicom+json"; boundary=x', UnsupportedInputError),
        ('multipart/related; type="application/dicom"', MalformedMultipartError),
    ],
    ids=["form-data", "metadata-type", "no-boundary"],
)
def test_parser_rejects_wrong_content_types(tmp_path: Path, ctype: str, error: type) -> None:
    with pytest.raises(error):
        MultipartRelatedParser(ctype, tmp_path, StowLimits())


def test_parser_rejects_a_truncated_body_and_a_non_dicom_part(tmp_path: Path, study: list[Path]) -> None:
    body, ctype = multipart_related([study[0].read_bytes()])
    with pytest.raises(MalformedMultipartError, match="closing boundary"):
        parse(body[:-30], ctype, tmp_path / "a")
    jpeg = body.replace(b"Content-Type: application/dicom", b"Content-Type: image/jpeg")
    with pytest.raises(UnsupportedInputError, match="part 1 has Content-Type 'image/jpeg'"):
        parse(jpeg, ctype, tmp_path / "b")


def test_store_parts_fails_only_the_malformed_instance(tmp_path: Path, study: list[Path]) -> None:
    truncated = study[1].read_bytes()[:-100]  # header intact, pixel data cut short
    body, ctype = multipart_related([study[0].read_bytes(), truncated, b"not dicom at all", study[2].read_bytes()])
    parts = parse(body, ctype, tmp_path / "out")
    kept: list[ReceivedInstance] = []
    outcomes = store_parts(parts, kept.append, Limits())
    assert [o.stored for o in outcomes] == [True, False, False, True]
    assert [k.path for k in kept] == [parts[0], parts[3]]
    uid = pydicom.dcmread(study[1], stop_before_pixels=True).SOPInstanceUID
    assert outcomes[1].sop_instance_uid == uid  # the truncated one is still named
    assert outcomes[1].failure_reason == CANNOT_UNDERSTAND and "part 2" in outcomes[1].detail
    assert outcomes[2].failure_reason == CANNOT_UNDERSTAND and "DICM" in outcomes[2].detail
    assert response_status(outcomes) == 202
    assert response_status(outcomes[1:3]) == 409 and response_status(outcomes[:1]) == 200


def test_store_parts_refuses_instances_of_another_study(tmp_path: Path, study: list[Path]) -> None:
    parts = parse(*multipart_related([study[0].read_bytes()]), tmp_path / "out")
    outcomes = store_parts(parts, lambda _: None, Limits(), study_uid="1.2.3.4")
    assert outcomes[0].failure_reason == 0xA900


def test_response_json_and_xml_carry_both_sequences(tmp_path: Path, study: list[Path]) -> None:
    body, ctype = multipart_related([study[0].read_bytes(), b"garbage"])
    outcomes = store_parts(parse(body, ctype, tmp_path / "out"), lambda _: None, Limits())
    dataset = store_instances_response(outcomes)
    data = json.loads(to_dicom_json(dataset))
    assert data["00081199"]["Value"][0]["00081155"]["Value"] == [outcomes[0].sop_instance_uid]
    assert data["00081198"]["Value"][0]["00081197"] == {"vr": "US", "Value": [CANNOT_UNDERSTAND]}
    assert pydicom.Dataset.from_json(data).ReferencedSOPSequence[0].ReferencedSOPInstanceUID == outcomes[0].sop_instance_uid

    root = ET.fromstring(to_dicom_xml(dataset))
    ns = {"n": NATIVE_DICOM_NS}
    assert root.tag == f"{{{NATIVE_DICOM_NS}}}NativeDicomModel"
    ref = root.find("n:DicomAttribute[@keyword='ReferencedSOPSequence']", ns)
    assert ref is not None and ref.get("tag") == "00081199" and ref.get("vr") == "SQ"
    uid = ref.find("n:Item[@number='1']/n:DicomAttribute[@tag='00081155']/n:Value[@number='1']", ns)
    assert uid is not None and uid.text == outcomes[0].sop_instance_uid
    reason = root.find("n:DicomAttribute[@tag='00081198']/n:Item/n:DicomAttribute[@tag='00081197']/n:Value", ns)
    assert reason is not None and int(reason.text) == CANNOT_UNDERSTAND
