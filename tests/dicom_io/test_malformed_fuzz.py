"""Randomly truncated or corrupted files only ever raise InputRejected (never another exception)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom.uid as uids
import pytest
from pydicom.data import get_testdata_file

from dicom_io.errors import InputRejected
from dicom_io.image2d import load_image2d
from dicom_io.reader import read_headers
from dicom_io.synthetic import write_ct_series, write_projection_image
from dicom_io.volume import build_volume

SOURCES = {
    "ct_explicit": uids.ExplicitVRLittleEndian,
    "ct_deflated": uids.DeflatedExplicitVRLittleEndian,
    "ct_rle": uids.RLELossless,
    "ct_jpeg_ls": uids.JPEGLSLossless,
    "ct_j2k": uids.JPEG2000Lossless,
    "ct_big_endian": uids.ExplicitVRBigEndian,
}


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    choice = rng.random()
    if choice < 0.3:
        return bytes(buf[: rng.randrange(len(buf))])
    if choice < 0.8:
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        return bytes(buf)
    at = rng.randrange(132, len(buf))
    buf[at:at + 4] = b"\xff\xff\xff\xff"
    return bytes(buf)


def _sources(tmp_path: Path) -> list[Path]:
    paths = [write_ct_series(np.zeros((1, 64, 64)), tmp_path / name, transfer_syntax=ts)[0]
             for name, ts in SOURCES.items()]
    paths.append(write_projection_image(np.zeros((64, 64)), tmp_path / "dx.dcm"))
    paths += [Path(get_testdata_file(n)) for n in ("JPGExtended.dcm", "rtdose.dcm", "SC_rgb_jpeg_dcmtk.dcm")]
    return paths


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("seed", range(4))
def test_corrupted_inputs_raise_only_input_rejected(tmp_path: Path, seed: int, limits) -> None:
    rng = random.Random(seed)
    sources = _sources(tmp_path)
    target = tmp_path / "mutated.dcm"
    for _ in range(60):
        target.write_bytes(_mutate(rng.choice(sources).read_bytes(), rng))
        try:
            study = read_headers([target], limits)
            for series in study.series:
                if series.modality in ("CT", "RTDOSE"):
                    assert build_volume(series, limits).array.dtype == np.float32
                else:
                    assert load_image2d(series.instances[0], limits).display.dtype == np.uint8
        except InputRejected:
            pass
