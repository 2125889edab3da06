"""PHI-free synthetic DICOM factory for tests, benchmarks and model generators.

Writes real DICOM Part 10 files (CT Image Storage; DX, MG For Presentation; CR) with generated UIDs, complete
geometry and fixed synthetic patient data. Compressed transfer syntaxes are written with pydicom's encoders when
the plugin is installed (RLE natively, JPEG-LS via pyjpegls, JPEG 2000 via pylibjpeg-openjpeg); explicit big
endian and deflated are written by pydicom's writer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom.uid as uids
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, generate_uid

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
PROJECTION_SOP_CLASSES = {
    "DX": UID("1.2.840.10008.5.1.4.1.1.1.1"),  # Digital X-Ray Image Storage - For Presentation
    "MG": UID("1.2.840.10008.5.1.4.1.1.1.2"),  # Digital Mammography X-Ray Image Storage - For Presentation
    "CR": UID("1.2.840.10008.5.1.4.1.1.1"),  # Computed Radiography Image Storage
}
CT_RESCALE_INTERCEPT = -1024.0
SYNTHETIC_PATIENT = {"PatientName": "PHANTOM^SYNTHETIC", "PatientID": "PHANTOM-0001"}
_NATIVE = {uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian, uids.ExplicitVRBigEndian,
           uids.DeflatedExplicitVRLittleEndian}


def write_ct_series(
    hu: np.ndarray,
    out_dir: str | Path,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    row_direction: Sequence[float] = (1.0, 0.0, 0.0),
    column_direction: Sequence[float] = (0.0, 1.0, 0.0),
    transfer_syntax: str = uids.ExplicitVRLittleEndian,
    shuffle: bool = False,
    reverse_instance_numbers: bool = False,
    study_uid: str | None = None,
    series_uid: str | None = None,
    tags: dict[str, Any] | None = None,
) -> list[Path]:
    """Write ``hu[k, j, i]`` as one CT slice per k; returns the paths (in slice order unless ``shuffle``).

    Voxel (k, j, i) lies at ``origin + k*spacing[0]*normal + j*spacing[1]*column_direction +
    i*spacing[2]*row_direction`` (LPS mm) with ``normal = row_direction x column_direction``. HU are stored as
    int16 with RescaleIntercept -1024. ``shuffle`` gives files names unrelated to their position and returns them
    in random order; ``reverse_instance_numbers`` numbers slices against their position.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be 3D [k, j, i], got shape {hu.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    row = _unit(row_direction)
    col = _unit(column_direction)
    normal = np.cross(row, col)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    stored = np.clip(np.rint(np.asarray(hu, dtype=np.float64) - CT_RESCALE_INTERCEPT), -32768, 32767).astype(np.int16)
    n = hu.shape[0]
    names = list(range(n))
    rng = random.Random(series_uid)
    if shuffle:
        rng.shuffle(names)
    paths: list[Path] = []
    for k in range(n):
        ds = _base(CT_IMAGE_STORAGE, "CT", study_uid, series_uid)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = n - k if reverse_instance_numbers else k + 1
        position = np.asarray(origin, dtype=np.float64) + k * float(spacing[0]) * normal
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[2])]
        ds.SliceThickness = _ds(spacing[0])
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        ds.RescaleIntercept = _ds(CT_RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        _pixel_module(ds, stored[k], bits_stored=16, signed=True, photometric="MONOCHROME2")
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        _apply_tags(ds, tags)
        path = out / f"CT_{names[k]:05d}.dcm"
        _save(ds, stored[k], path, transfer_syntax)
        paths.append(path)
    if shuffle:
        rng.shuffle(paths)
    return paths


def write_projection_image(
    array2d: np.ndarray,
    path: str | Path,
    *,
    modality: str = "DX",
    pixel_spacing: Sequence[float] = (0.15, 0.15),
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    transfer_syntax: str = uids.ExplicitVRLittleEndian,
    tags: dict[str, Any] | None = None,
) -> Path:
    """Write a DX/MG (For Presentation) or CR image; ``array2d`` is intensity with larger = brighter.

    Values are rounded and clipped to ``[0, 2**bits_stored - 1]``; for MONOCHROME1 the stored values are
    ``2**bits_stored - 1 - array2d`` so that a reader that honours MONOCHROME1 gets ``array2d`` back.
    ``pixel_spacing`` (row, column spacing in mm) is written as ImagerPixelSpacing (and PixelSpacing for CR).
    """
    modality = modality.upper()
    if modality not in PROJECTION_SOP_CLASSES:
        raise ValueError(f"modality must be one of {sorted(PROJECTION_SOP_CLASSES)}, got {modality!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    top = 2**bits_stored - 1
    values = np.clip(np.rint(np.asarray(array2d, dtype=np.float64)), 0, top).astype(np.uint16)
    if values.ndim != 2:
        raise ValueError(f"array2d must be 2D [row, column], got shape {values.shape}")
    stored = (top - values).astype(np.uint16) if photometric == "MONOCHROME1" else values
    ds = _base(PROJECTION_SOP_CLASSES[modality], modality, generate_uid(), generate_uid())
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"] if modality != "MG" else ["A", "R"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if modality != "MG" else ["ORIGINAL", "PRIMARY", ""]
    ds.BodyPartExamined = "BREAST" if modality == "MG" else "CHEST"
    ds.ImageLaterality = "L" if modality == "MG" else "U"
    ds.ViewPosition = "CC" if modality == "MG" else "PA"
    spacing = [_ds(pixel_spacing[0]), _ds(pixel_spacing[1])]
    if modality == "CR":
        ds.PixelSpacing = spacing
        ds.ImagerPixelSpacing = spacing
    else:
        _dx_modules(ds, modality, spacing, photometric)
    _pixel_module(ds, stored, bits_stored=bits_stored, signed=False, photometric=photometric)
    ds.WindowCenter = _ds((top + 1) / 2)
    ds.WindowWidth = _ds(top + 1)
    _apply_tags(ds, tags)
    if modality == "MG" and "ViewCodeSequence" not in (tags or {}):
        _mammography_view_code(ds)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(ds, stored, path, transfer_syntax)
    return path


def _dx_modules(ds: Dataset, modality: str, spacing: list[str], photometric: str) -> None:
    """DX Series, DX Image, DX Detector and (for MG) Mammography Image attributes."""
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = spacing
    ds.DetectorType = "DIRECT"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.KVP = "28" if modality == "MG" else "120"
    if modality == "MG":
        ds.PositionerType = "MAMMOGRAPHIC"
        ds.BreastImplantPresent = "NO"
        ds.PartialView = "NO"
        ds.OrganExposed = "BREAST"
        ds.AnatomicRegionSequence = DicomSequence([_code("76752008", "SCT", "Breast")])
    else:
        ds.PositionerType = "NONE"
        ds.AnatomicRegionSequence = DicomSequence([_code("51185008", "SCT", "Chest")])
        ds.ViewCodeSequence = DicomSequence([_code("399348003", "SCT", "postero-anterior")])


# SNOMED CT codes of mammography views (DICOM CID 4014), keyed by ViewPosition.
MAMMOGRAPHY_VIEW_CODES = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
    "ML": ("399260004", "medio-lateral"),
    "LM": ("399352003", "latero-medial"),
}


def _mammography_view_code(ds: Dataset) -> None:
    """ViewCodeSequence matching ViewPosition, so that the two never disagree in a generated MG image."""
    value, meaning = MAMMOGRAPHY_VIEW_CODES.get(str(ds.get("ViewPosition", "")), MAMMOGRAPHY_VIEW_CODES["CC"])
    ds.ViewCodeSequence = DicomSequence([_code(value, "SCT", meaning)])
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = DicomSequence([])


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _base(sop_class: UID, modality: str, study_uid: str, series_uid: str) -> Dataset:
    """Patient, General Study/Series/Equipment/Image and SOP Common attributes with synthetic values."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = SYNTHETIC_PATIENT["PatientName"]
    ds.PatientID = SYNTHETIC_PATIENT["PatientID"]
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "Synthetic phantom"
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"Synthetic {modality} phantom"
    ds.Manufacturer = "radinfer synthetic"
    ds.ContentDate = "20240101"
    ds.ContentTime = "120000"
    return ds


def _pixel_module(ds: Dataset, stored: np.ndarray, *, bits_stored: int, signed: bool, photometric: str) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(v) for v in stored.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0


def _save(ds: Dataset, stored: np.ndarray, path: Path, transfer_syntax: str) -> None:
    ts = UID(transfer_syntax)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = uids.PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    if ts in _NATIVE:
        meta.TransferSyntaxUID = ts
        order = "<" if ts.is_little_endian else ">"
        ds.PixelData = stored.astype(stored.dtype.newbyteorder(order)).tobytes()
        ds["PixelData"].VR = "OW"
        ds.save_as(path, enforce_file_format=True)
        return
    meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    ds.compress(ts, stored, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def _apply_tags(ds: Dataset, tags: dict[str, Any] | None) -> None:
    for keyword, value in (tags or {}).items():
        setattr(ds, keyword, value)


def _unit(vector: Sequence[float]) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64)
    norm = np.linalg.norm(v)
    if v.shape != (3,) or norm == 0:
        raise ValueError(f"direction must be a non-zero 3-vector, got {vector!r}")
    return v / norm


def _ds(value: float) -> str:
    """A DS string of at most 16 characters."""
    text = f"{float(value):.10g}"
    return "0" if text == "-0" else text
