"""PHI-free minimal source images (CT series, DX radiograph) for the writer tests."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from dicom_io.writers.provenance import ModelProvenance


def _base(sop_class_uid: str, study_uid: str, series_uid: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = "PHANTOM^SYNTHETIC"
    ds.PatientID = "SYNTH-001"
    ds.PatientBirthDate = "20000101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.StudyDescription = "Phantom study"
    ds.IssuerOfPatientID = "RADINFER-TEST"
    ds.PatientAge = "026Y"
    ds.AccessionNumber = "ACC1"
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.Modality = modality
    ds.Manufacturer = "PhantomCo"
    ds.ContentDate = "20260101"
    ds.ContentTime = "120000"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def make_ct_series(num_slices: int = 6, rows: int = 16, columns: int = 20) -> list[Dataset]:
    """Axial CT slices ordered by increasing z (k = 0..n-1), 0.7 x 0.8 mm pixels, 2.5 mm slices."""
    study_uid, series_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for k in range(num_slices):
        ds = _base(CTImageStorage, study_uid, series_uid, "CT")
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-7.0, -6.0, 2.5 * k]
        ds.SliceThickness = 2.5
        ds.PixelSpacing = [0.8, 0.7]
        ds.Rows, ds.Columns = rows, columns
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.KVP = 120
        ds.PatientPosition = "HFS"
        ds.Laterality = None
        ds.AcquisitionNumber = 1
        ds.PixelData = np.full((rows, columns), 1000 + k, dtype=np.uint16).tobytes()
        datasets.append(ds)
    return datasets


def make_dx_image(rows: int = 32, columns: int = 24) -> Dataset:
    ds = _base(DigitalXRayImageStorageForPresentation, generate_uid(), generate_uid(), "DX")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["A", "F"]
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = (np.arange(rows * columns, dtype=np.uint16) % 4096).tobytes()
    return ds


@pytest.fixture
def ct_series() -> list[Dataset]:
    return make_ct_series()


@pytest.fixture
def dx_image() -> Dataset:
    return make_dx_image()


@pytest.fixture
def provenance() -> ModelProvenance:
    return ModelProvenance(
        name="lung_nodules_phantom",
        version="0.1.0",
        weights_sha256="ab" * 32,
        trained_on_synthetic_data=True,
        disclaimer="Research use only. Not for clinical use.",
    )
