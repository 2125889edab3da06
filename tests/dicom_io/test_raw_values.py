"""``header_value`` answers what ``Dataset.get`` answers, and the load gives the same outcome with or without it.

Values are compared after the conversions the callers make (int, float, str); a value parsed from raw bytes must
also be one that pydicom accepts in its strictest validation mode, so that no warning is lost. Whole loads (header
pass, series grouping, volume) of pydicom's test files and of corrupted CT headers must end the same way with the
raw parse switched off: the same error, or the same series and bitwise the same volume.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom import config, dcmread
from pydicom.data.data_manager import DATA_ROOT
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from dicom_io import rawvalues
from dicom_io.errors import InputRejected
from dicom_io.limits import Limits
from dicom_io.rawvalues import conversion_cannot_fail, has_element, header_value
from dicom_io.reader import read_headers
from dicom_io.synthetic import write_ct_series
from dicom_io.volume import build_volume

KEYWORDS = ["Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
            "NumberOfFrames", "SeriesNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
            "SOPClassUID", "FrameOfReferenceUID", "Modality", "PhotometricInterpretation", "ImagePositionPatient",
            "ImageOrientationPatient", "PixelSpacing", "ImagerPixelSpacing", "RescaleSlope", "RescaleIntercept",
            "DoseGridScaling", "SliceThickness", "SpacingBetweenSlices", "GridFrameOffsetVector"]
PYDICOM_FILES = sorted(Path(DATA_ROOT).rglob("*.dcm"), key=lambda p: (p.name, str(p)))  # shipped files, no download
ALPHABET = " +-.0123456789eE\\\x00aZ_"


def _plain(value: object) -> object:
    """A value as the callers use it: numbers as float (repr), texts as str, several values as a list."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_plain(v) for v in value]  # type: ignore[union-attr]
    if isinstance(value, (int, float)):
        return repr(float(value))  # repr: nan equals nan
    return value if value is None else str(value)


def _get(ds: Dataset, keyword: str) -> tuple[str, object]:
    try:
        return "value", _plain(ds.get(keyword, "absent"))
    except Exception as exc:  # noqa: BLE001 - the error pydicom raises must be raised alike
        return "error", type(exc).__name__


def _fast(ds: Dataset, keyword: str) -> tuple[str, object]:
    try:
        return "value", _plain(header_value(ds, keyword, "absent"))
    except Exception as exc:  # noqa: BLE001
        return "error", type(exc).__name__


def _random_value(rng: random.Random, count: int) -> bytes:
    """Backslash-separated parts (mostly ``count`` of them), each an integer, a decimal, a UID, a code or random
    characters; random padding."""
    parts = []
    for _ in range(count if rng.random() < 0.7 else rng.randint(1, 7)):
        kind = rng.random()
        if kind < 0.2:
            parts.append(str(rng.randint(-(10**rng.randint(1, 12)), 10**rng.randint(1, 12))))
        elif kind < 0.6:
            parts.append(f"{rng.uniform(-1e4, 1e4):.{rng.randint(0, 12)}{rng.choice('fe')}}")
        elif kind < 0.75:
            parts.append(".".join(str(rng.randint(0, 999)) for _ in range(rng.randint(1, 8))))
        elif kind < 0.9:
            parts.append("".join(rng.choice("ABCMOTX0129_") for _ in range(rng.randint(1, 18))))
        else:
            parts.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12))))
    return ("\\".join(parts) + rng.choice(["", " ", "\x00", "  "])).encode("latin-1")


def _one(keyword: str, value: bytes, *, explicit_vr: str | None = "dictionary") -> Dataset:
    tag = BaseTag(tag_for_keyword(keyword))
    vr = dictionary_VR(tag) if explicit_vr == "dictionary" else explicit_vr
    return Dataset({tag: RawDataElement(tag, vr, len(value), value, 0, vr is None, True)})


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", PYDICOM_FILES, ids=lambda p: p.name)
def test_header_value_equals_dataset_get_on_pydicom_test_files(path: Path) -> None:
    try:
        fast, full = dcmread(path, stop_before_pixels=True), dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - files pydicom cannot read have nothing to compare
        pytest.skip("pydicom cannot read this file")
    for keyword in KEYWORDS:
        assert _fast(fast, keyword) == _get(full, keyword), keyword


@pytest.mark.parametrize(("keyword", "value"), [
    ("Rows", b"\x00\x02"), ("Rows", b"\x01"), ("Rows", b"\x00\x02\x00\x02"), ("Rows", b""),
    ("NumberOfFrames", b"12"), ("NumberOfFrames", b" 12 "), ("NumberOfFrames", b"1.0"), ("NumberOfFrames", b"x"),
    ("NumberOfFrames", b"99999999999"), ("NumberOfFrames", b"2\\3"), ("NumberOfFrames", b"+7 "),
    ("RescaleSlope", b"1.5 "), ("RescaleSlope", b"1e999"), ("RescaleSlope", b"nan"), ("RescaleSlope", b"-.5E+2"),
    ("RescaleSlope", b"1\\2"), ("RescaleSlope", b"12345678901234567"), ("RescaleSlope", b"1_0"),
    ("ImagePositionPatient", b"-179\\-179.0\\-300.5 "), ("ImagePositionPatient", b"1\\2"),
    ("ImagePositionPatient", b"1\\2\\3\\4"), ("ImagePositionPatient", b"1\\\\3"),
    ("SOPInstanceUID", b"1.2.3\x00"), ("SOPInstanceUID", b"1.02.3"), ("SOPInstanceUID", b"1.2.3\\4.5"),
    ("SOPInstanceUID", b"1." + b"1" * 70), ("Modality", b"CT"), ("Modality", b"ct"), ("Modality", b"C T "),
    ("PhotometricInterpretation", b"MONOCHROME2 "), ("GridFrameOffsetVector", b"0\\2.5\\5"),
])
def test_header_value_equals_dataset_get_on_crafted_values(keyword: str, value: bytes,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for vr in ("dictionary", None, "UN"):
        _compare(keyword, value, vr, monkeypatch)  # asserts inside


@pytest.mark.parametrize("keyword", ["NumberOfFrames", "RescaleIntercept", "ImageOrientationPatient",
                                     "PixelSpacing", "SeriesInstanceUID", "Modality"])
def test_header_value_parses_only_what_pydicom_accepts_strictly(keyword: str, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """Random values: equal answers, and whatever is parsed raw converts in pydicom's RAISE mode unchanged."""
    rng = random.Random(keyword)
    count = {"ImageOrientationPatient": 6, "PixelSpacing": 2}.get(keyword, 1)
    parsed = sum(_compare(keyword, _random_value(rng, count), "dictionary", monkeypatch) for _ in range(2000))
    assert parsed > 20


def _compare(keyword: str, value: bytes, vr: str | None, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Assert ``header_value`` == ``Dataset.get``, and that a value parsed raw converts in pydicom's RAISE mode
    without a warning; whether it was parsed raw."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _one(keyword, value, explicit_vr=vr)
        fast = _fast(ds, keyword)
        assert fast == _get(_one(keyword, value, explicit_vr=vr), keyword), value
    still_raw = isinstance(ds.get_item(BaseTag(tag_for_keyword(keyword))), RawDataElement)
    if not (still_raw and fast[0] == "value" and fast[1] != "absent"):
        return False
    with monkeypatch.context() as strict, warnings.catch_warnings():
        strict.setattr(config.settings, "reading_validation_mode", config.RAISE)
        warnings.simplefilter("error")
        assert _plain(ds.get(keyword, "absent")) == fast[1], value
    return True


def test_has_element_is_keyword_in_dataset() -> None:
    ds = _one("ModalityLUTSequence", b"")
    ds.Rows = 4
    for keyword in ("ModalityLUTSequence", "Rows", "SharedFunctionalGroupsSequence", "PixelSpacing"):
        assert has_element(ds, keyword) == (keyword in ds)
    assert has_element(ds, "Rows") and not has_element(ds, "PixelSpacing")


@pytest.mark.parametrize("vr", ["US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT", "OB", "OW", "OF", "OD",
                                "OL", "OV", "UN", "SQ", "DA", None])
def test_conversion_cannot_fail_only_when_pydicom_converts(vr: str | None) -> None:
    tag = BaseTag(0x00091010 if vr is None else 0x00280010)
    for length in range(17):
        value = bytes(range(length))
        raw = RawDataElement(tag, vr, length, value, 0, vr is None, True)
        if conversion_cannot_fail(vr, value):
            convert_raw_data_element(raw)


def _load(paths: list[Path], limits: Limits) -> object:
    """The outcome of a whole load: the error, or per series its grouping and volume (or volume error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            study = read_headers(paths, limits)
        except InputRejected as exc:
            return "rejected", type(exc).__name__, str(exc)
        result = []
        for series in study.series:
            names = [h.path.name for h in series.instances]
            try:
                volume = build_volume(series, limits)
            except InputRejected as exc:
                result.append((series.series_instance_uid, series.modality, names, type(exc).__name__, str(exc)))
                continue
            result.append((series.series_instance_uid, series.modality, names, volume.array.tobytes(),
                           volume.affine.tobytes(), volume.spacing, volume.slice_refs, volume.frame_of_reference_uid))
        return result, [(s.filename, s.reason) for s in study.skipped]


def _no_raw_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rawvalues, "_parse", lambda *args: rawvalues._NOT_PARSED)


@pytest.mark.parametrize("path", PYDICOM_FILES, ids=lambda p: p.name)
def test_load_outcome_without_raw_parse_is_the_same_on_pydicom_test_files(path: Path, limits: Limits,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _load([path], limits)
    _no_raw_parse(monkeypatch)
    assert fast == _load([path], limits)


@pytest.mark.parametrize("seed", range(3))
def test_load_outcome_without_raw_parse_is_the_same_on_corrupted_headers(seed: int, tmp_path: Path, limits: Limits,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Byte flips in the header values of one slice of a small series: the same error or the same volume."""
    rng = random.Random(seed)
    hu = np.random.default_rng(seed).normal(0, 300, (4, 12, 10)).astype(np.float32)
    paths = write_ct_series(hu, tmp_path / "src", spacing=(2.5, 0.7, 0.8), origin=(1.0, -2.0, 30.0))
    source = paths[2].read_bytes()
    header_end = source.index(b"\xe0\x7f\x10\x00")
    mutated = []
    for _ in range(40):
        buf = bytearray(source)
        for _ in range(rng.randint(1, 3)):
            buf[rng.randrange(300, header_end)] = rng.choice(b"0123456789.-+\\ eEx\x00\x01")
        mutated.append(bytes(buf))
    outcomes = []
    for data in mutated:
        paths[2].write_bytes(data)
        outcomes.append(_load(paths, limits))
    _no_raw_parse(monkeypatch)
    for data, outcome in zip(mutated, outcomes, strict=True):
        paths[2].write_bytes(data)
        assert _load(paths, limits) == outcome


@pytest.mark.parametrize(("keyword", "value"), [
    ("ImagePositionPatient", b"1e999\\0\\0 "), ("ImagePositionPatient", b"0\\0"), ("ImagePositionPatient", b"a\\0\\0 "),
    ("RescaleSlope", b"1e999 "), ("RescaleSlope", b"1\\2 "), ("PixelSpacing", b"nan\\1 "), ("Rows", b"\x0c\x00\x00\x00"),
    ("NumberOfFrames", b"0 "), ("NumberOfFrames", b"1.5 "), ("SeriesNumber", b"x "), ("Modality", b"ct"),
    ("SOPInstanceUID", b"1.2.3.04\x00"), ("ImageOrientationPatient", b"1\\0\\0\\1\\0\\0 "),
])
def test_load_outcome_without_raw_parse_is_the_same_on_odd_values(keyword: str, value: bytes, tmp_path: Path,
                                                                  limits: Limits,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_ct_series(np.zeros((4, 12, 10), np.float32), tmp_path, spacing=(2.5, 0.7, 0.8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(paths[1])
        tag = BaseTag(tag_for_keyword(keyword))
        ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
        ds.save_as(paths[1])
    fast = _load(paths, limits)
    _no_raw_parse(monkeypatch)
    assert fast == _load(paths, limits)
