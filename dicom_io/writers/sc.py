"""Secondary Capture result images (key images, overlays, heat maps) built with highdicom."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_io.writers.provenance import ModelProvenance, add_image_comments

# LPS axis -> (letter for +direction, letter for -direction), as used by Patient Orientation (0020,0020).
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))


def _direction_letters(vector: np.ndarray) -> str:
    """Patient Orientation letters of one direction cosine, strongest axis first (e.g. 'L', 'FP')."""
    order = np.argsort(-np.abs(vector))
    return (
        "".join(
            _AXIS_LETTERS[axis][0 if vector[axis] > 0 else 1] for axis in order if abs(vector[axis]) > 1e-3
        )[:3]
        or "L"
    )


def _patient_orientation(source: Dataset) -> list[str] | None:
    """The row/column directions of the source image, or None when the source does not say."""
    if "PatientOrientation" in source and len(source.PatientOrientation) == 2:
        return [str(v) for v in source.PatientOrientation]
    if "ImageOrientationPatient" in source:
        iop = np.asarray([float(v) for v in source.ImageOrientationPatient])
        return [_direction_letters(iop[:3]), _direction_letters(iop[3:])]
    return None


def _pixel_array(rgb: np.ndarray) -> tuple[np.ndarray, str]:
    array = np.ascontiguousarray(rgb)
    if array.dtype != np.uint8:
        raise ValueError(
            f"secondary_capture needs a uint8 image, got dtype {array.dtype}; scale it to 0..255 first."
        )
    if array.ndim == 2:
        return array, "MONOCHROME2"
    if array.ndim == 3 and array.shape[2] == 3:
        return array, "RGB"
    raise ValueError(f"secondary_capture needs an array of shape (H, W) or (H, W, 3), got {array.shape}.")


def secondary_capture(
    source: Dataset,
    rgb: np.ndarray,
    *,
    provenance: ModelProvenance,
    series_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    description: str,
    source_frame: int | None = None,
    sop_instance_uid: str | None = None,
) -> hd.sc.SCImage:
    """A Secondary Capture of ``rgb`` (H, W, 3) or grayscale (H, W) uint8 in the source's study.

    The image is marked DERIVED with burnt-in annotation, conversion type WSD, and references ``source``
    (Source Image Sequence; ``source_frame``, 1-based, for a multi-frame source) so viewers can link it back.
    ``source`` needs no pixel data.
    """
    pixels, photometric = _pixel_array(rgb)
    orientation = _patient_orientation(source)
    same_grid = pixels.shape[:2] == (source.get("Rows"), source.get("Columns"))
    spacing = source.get("PixelSpacing") if same_grid else None
    laterality = source.get("ImageLaterality") or source.get("Laterality") or None
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=photometric,
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        # Placeholder: the constructor validates single letters; the real value is set below.
        patient_orientation=("L", "P"),
        pixel_spacing=tuple(float(v) for v in spacing) if spacing else None,
        laterality=laterality if laterality in ("L", "R") else None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[provenance.contributing_equipment()],
        series_description=description[:64],
        **provenance.equipment_kwargs(),
    )
    # Type 2: empty when the source does not define its orientation (better than a guess).
    image.PatientOrientation = orientation
    if "Laterality" not in image:
        image.Laterality = None  # Type 2C: present and empty when the source does not state a laterality.
    image.ConversionType = "WSD"
    image.BurnedInAnnotation = "YES"
    image.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    image.DerivationDescription = f"radinfer {provenance.name} {provenance.version}: {description}"[:1024]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if source_frame is not None:
        reference.ReferencedFrameNumber = source_frame
    reference.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    ]
    image.SourceImageSequence = [reference]
    add_image_comments(image, provenance)
    return image


def save_png(rgb: np.ndarray, path: Path | str) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) image as PNG (the non-DICOM twin of a Secondary Capture)."""
    pixels, _ = _pixel_array(rgb)
    path = Path(path)
    Image.fromarray(pixels).save(path, format="PNG")
    return path
