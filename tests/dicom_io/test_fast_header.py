"""The fast header scan gives exactly what pydicom's reader gives, or steps aside.

Every file is read twice through ``read_header``: as shipped (fast scan first) and with the scan disabled (pydicom's
``read_dataset`` only). The datasets must hold the same raw elements (tag, VR, length, value bytes, offset,
encoding), the same original encoding and character set, and the same pixel data location; files that are
rejected must be rejected the same way. The volumes built from the two header passes must be bitwise equal.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pydicom.uid as uids
import pytest
from pydicom.data import get_testdata_file
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataelem import RawDataElement
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag

from dicom_io import fastheader, reader
from dicom_io.errors import InputRejected
from dicom_io.fastheader import scan_dataset, shared_tag
from dicom_io.limits import Limits
from dicom_io.reader import read_header, read_headers
from dicom_io.synthetic import write_ct_series, write_projection_image
from dicom_io.types import InstanceHeader, SkippedInstance
from dicom_io.volume import build_volume

PYDICOM_FILES = sorted(Path(DATA_ROOT).rglob("*.dcm"), key=lambda p: (p.name, str(p)))  # shipped files, no download
SYNTHETIC_SYNTAXES = {
    "explicit_le": uids.ExplicitVRLittleEndian,
    "implicit_le": uids.ImplicitVRLittleEndian,
    "rle": uids.RLELossless,
    "deflated": uids.DeflatedExplicitVRLittleEndian,
    "big_endian": uids.ExplicitVRBigEndian,
}


def _full_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "scan_dataset", lambda *args, **kwargs: None)


def _outcome(path: Path, limits: Limits) -> tuple[str, object]:
    """What the header pass makes of one file, in a form that compares element by element."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = read_header(path, limits)
        except InputRejected as exc:
            return "rejected", (type(exc).__name__, str(exc))
    if isinstance(result, SkippedInstance):
        return "skipped", result.reason
    return "header", _snapshot(result)


def _snapshot(header: InstanceHeader) -> tuple[object, ...]:
    ds = header.dataset
    elements = tuple(tuple(e) if isinstance(e, RawDataElement) else (e.tag, e.VR, e.value)
                     for e in ds._dict.values())
    return elements, ds.original_encoding, ds.original_character_set, header.pixel


@pytest.mark.parametrize("path", PYDICOM_FILES, ids=lambda p: p.name)
def test_fast_scan_equals_pydicom_reader_on_pydicom_test_files(path: Path, limits: Limits,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _outcome(path, limits)
    _full_path(monkeypatch)
    assert fast == _outcome(path, limits)


@pytest.mark.parametrize("syntax", list(SYNTHETIC_SYNTAXES.values()), ids=list(SYNTHETIC_SYNTAXES))
def test_fast_scan_equals_pydicom_reader_on_synthetic_series(syntax: str, tmp_path: Path, limits: Limits,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    hu = np.random.default_rng(0).normal(0, 300, (6, 24, 20)).astype(np.float32)
    paths = write_ct_series(hu, tmp_path, spacing=(2.5, 0.7, 0.8), origin=(1.0, -2.0, 30.0), shuffle=True)
    paths.append(write_projection_image(np.full((16, 12), 900.0), tmp_path / "dx.dcm"))
    fast = [_outcome(p, limits) for p in paths]
    fast_volume = build_volume(read_headers(paths[:-1], limits).series[0], limits).array
    _full_path(monkeypatch)
    assert fast == [_outcome(p, limits) for p in paths]
    full_volume = build_volume(read_headers(paths[:-1], limits).series[0], limits).array
    assert fast_volume.tobytes() == full_volume.tobytes()


@pytest.mark.parametrize("syntax", [uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian],
                         ids=["explicit", "implicit"])
def test_fast_scan_is_taken_for_native_little_endian(syntax: str, tmp_path: Path) -> None:
    path = write_ct_series(np.zeros((1, 8, 8)), tmp_path, transfer_syntax=syntax)[0]
    with open(path, "rb") as fp:
        fp.seek(132)
        reader._read_meta(fp, path.name)
        start = fp.tell()
        ds = scan_dataset(fp, implicit=syntax == uids.ImplicitVRLittleEndian, stop_tags={0x7FE00010})
        assert ds is not None and "Rows" in ds
        assert fp.tell() > start  # left at the pixel data element
        assert fp.read(4) == b"\xe0\x7f\x10\x00"


def test_fast_scan_reads_sequences_of_undefined_length_as_pydicom_does() -> None:
    source = Path(get_testdata_file("reportsi.dcm"))  # explicit VR little endian, sequences of undefined length
    with open(source, "rb") as fp:
        fp.seek(132)
        reader._read_meta(fp, source.name)
        start = fp.tell()
        fast = scan_dataset(fp, implicit=False, stop_tags={0x7FE00010})
        fp.seek(start)
        full = read_dataset(fp, False, True)
    assert fast is not None
    sequences = [e for e in fast if e.VR == "SQ" and e.is_undefined_length]
    assert sequences and fast == full
    assert [item for e in sequences for item in e.value] == [item for e in sequences for item in full[e.tag].value]


@pytest.mark.parametrize("seed", range(2))
def test_fast_scan_equals_pydicom_reader_on_corrupted_files(seed: int, tmp_path: Path, limits: Limits,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Random byte flips and truncations in the header: both paths accept or reject each file alike."""
    rng = random.Random(seed)
    source = write_ct_series(np.zeros((1, 16, 16)), tmp_path / "src")[0].read_bytes()
    header_end = source.index(b"\xe0\x7f\x10\x00")
    mutated = []
    for n in range(60):
        buf = bytearray(source)
        if n % 3 == 0:
            buf = buf[: rng.randrange(132, header_end + 16)]
        else:
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(132, header_end + 12)] = rng.randrange(256)
        path = tmp_path / f"m{n}.dcm"
        path.write_bytes(bytes(buf))
        mutated.append(path)
    fast = [_outcome(p, limits) for p in mutated]
    _full_path(monkeypatch)
    assert fast == [_outcome(p, limits) for p in mutated]


def test_shared_tags_are_the_tags_and_the_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastheader, "_shared_tags", {})
    monkeypatch.setattr(fastheader, "_MAX_SHARED_TAGS", 4)
    numbers = range(0x00080000, 0x00080010)
    tags = [shared_tag(n) for n in numbers]
    assert tags == list(numbers) and all(isinstance(t, BaseTag) for t in tags)
    assert shared_tag(numbers[0]) is tags[0]
    assert len(fastheader._shared_tags) == 4
