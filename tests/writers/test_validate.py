from __future__ import annotations

import pytest

from dicom_io import validate

needs_dciodvfy = pytest.mark.skipif(
    not validate.available(), reason="dciodvfy (dicom3tools) is not installed"
)


def test_parse_splits_error_warning_and_abort_lines():
    output = (
        "Warning - </Laterality(0020,0060)> - empty\nError - </Rows> - Missing\nAbort - read failed\nother\n"
    )
    result = validate._parse(output)
    assert result.errors == ["Error - </Rows> - Missing", "Abort - read failed"]
    assert result.warnings == ["Warning - </Laterality(0020,0060)> - empty"]
    assert not result.ok


@needs_dciodvfy
def test_dciodvfy_reports_error_for_non_dicom_file(tmp_path):
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"not dicom")
    assert validate.dciodvfy(path).errors


@needs_dciodvfy
def test_dciodvfy_accepts_in_memory_valid_ct_slice(ct_series):
    assert validate.dciodvfy(ct_series[0]).errors == []


@needs_dciodvfy
def test_dciodvfy_reports_missing_type1_attribute(ct_series):
    del ct_series[0].Rows
    assert any("Rows" in e for e in validate.dciodvfy(ct_series[0]).errors)
