"""The synthetic factory writes valid, PHI-free Part 10 objects (checked with dciodvfy when installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid as uids
import pytest

from dicom_io.synthetic import (
    CT_IMAGE_STORAGE,
    PROJECTION_SOP_CLASSES,
    write_ct_series,
    write_projection_image,
)

DCIODVFY = shutil.which("dciodvfy")


def _objects(tmp_path: Path) -> list[tuple[str, Path]]:
    image = np.tile(np.linspace(0, 1000, 64), (64, 1))
    ct = write_ct_series(np.zeros((2, 64, 64)), tmp_path / "ct")[0]
    ct_jls = write_ct_series(np.zeros((1, 64, 64)), tmp_path / "ct_jls", transfer_syntax=uids.JPEGLSLossless)[0]
    ct_rle = write_ct_series(np.zeros((1, 64, 64)), tmp_path / "ct_rle", transfer_syntax=uids.RLELossless)[0]
    ct_be = write_ct_series(np.zeros((1, 64, 64)), tmp_path / "ct_be", transfer_syntax=uids.ExplicitVRBigEndian)[0]
    mg_j2k = write_projection_image(image, tmp_path / "mg_j2k.dcm", modality="MG",
                                    transfer_syntax=uids.JPEG2000Lossless)
    mg_mlo = write_projection_image(image, tmp_path / "mg_mlo.dcm", modality="MG",
                                    tags={"ViewPosition": "MLO", "ImageLaterality": "R", "PatientOrientation": ["P", "FL"]})
    # Deflated files are not included: dciodvfy cannot read deflated datasets (pydicom round trips are tested).
    return [("CT", ct), ("CT_jpeg_ls", ct_jls), ("CT_rle", ct_rle), ("CT_big_endian", ct_be), ("MG_j2k", mg_j2k),
            ("MG_MLO", mg_mlo)] + [
        (f"{m}_{p}", write_projection_image(image, tmp_path / f"{m}_{p}.dcm", modality=m, photometric=p))
        for m in ("DX", "CR", "MG") for p in ("MONOCHROME1", "MONOCHROME2")
    ]


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_synthetic_objects_pass_dciodvfy_without_errors(tmp_path: Path) -> None:
    for label, path in _objects(tmp_path):
        result = subprocess.run([DCIODVFY, str(path)], check=False, capture_output=True, text=True, timeout=30)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{label}: {errors}"


def test_synthetic_ct_header_is_complete_and_phi_free(tmp_path: Path) -> None:
    hu = np.full((3, 16, 16), -1000.0)
    paths = write_ct_series(hu, tmp_path, spacing=(2.5, 0.5, 0.6), origin=(1, 2, 3),
                            tags={"PatientSex": "F", "StudyDate": "20200202"})
    ds = pydicom.dcmread(paths[1])
    assert ds.SOPClassUID == CT_IMAGE_STORAGE and ds.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert str(ds.PatientName) == "PHANTOM^SYNTHETIC" and ds.PatientSex == "F" and ds.StudyDate == "20200202"
    assert ds.pixel_array.dtype == np.int16 and int(ds.pixel_array[0, 0]) == 24
    assert float(ds.RescaleIntercept) == -1024.0 and float(ds.RescaleSlope) == 1.0
    assert [float(v) for v in ds.ImagePositionPatient] == [1.0, 2.0, 5.5]
    assert [float(v) for v in ds.PixelSpacing] == [0.5, 0.6]
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in paths}) == 3
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in paths}) == 1


@pytest.mark.parametrize("modality", sorted(PROJECTION_SOP_CLASSES))
def test_synthetic_projection_sop_class_and_spacing(tmp_path: Path, modality: str) -> None:
    path = write_projection_image(np.zeros((8, 8)), tmp_path / "x.dcm", modality=modality, pixel_spacing=(0.2, 0.1),
                                  tags={"ViewPosition": "AP", "PatientBirthDate": "20100101"})
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == PROJECTION_SOP_CLASSES[modality] and ds.Modality == modality
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.2, 0.1]
    assert ds.ViewPosition == "AP" and ds.PatientBirthDate == "20100101"


@pytest.mark.parametrize(("view", "meaning"), [("CC", "cranio-caudal"), ("MLO", "medio-lateral oblique")])
def test_mammography_view_code_follows_view_position(tmp_path: Path, view: str, meaning: str) -> None:
    path = write_projection_image(np.zeros((32, 16)), tmp_path / "mg.dcm", modality="MG", tags={"ViewPosition": view})
    ds = pydicom.dcmread(path)
    assert ds.ViewPosition == view
    assert ds.ViewCodeSequence[0].CodeMeaning == meaning
    assert ds.ViewCodeSequence[0].CodingSchemeDesignator == "SCT"
