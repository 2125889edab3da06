"""Secondary Capture result images (key images, overlays, heat maps) built with highdicom."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from pathlib import Path

import highdicom as hd
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_io.image2d import pixel_spacing
from dicom_io.writers.identity import series_date_time
from dicom_io.writers.provenance import ModelProvenance, add_image_comments
from dicom_io.writers.source import result_source, valid_value

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


def _keep_lossy_flag(source: Dataset, image: Dataset) -> None:
    """A source that went through lossy compression (LossyImageCompression "01") passes the flag, ratio and
    method on to the derived image: PS3.3 C.7.6.1.1.5 forbids resetting it, so a viewer keeps warning the reader."""
    if str(source.get("LossyImageCompression", "") or "").strip() != "01":
        return
    image.LossyImageCompression = "01"
    for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if source.get(keyword) not in (None, ""):
            setattr(image, keyword, source.get(keyword))


def _copy_laterality(source: Dataset, image: Dataset, paired_body_part: bool) -> None:
    """The source's laterality on the SC. R or L (ImageLaterality, else Laterality) becomes the series
    Laterality; B or U, which a series Laterality cannot hold, stays ImageLaterality, which makes Laterality
    (Type 2C) absent; with neither, Laterality is empty (unknown) for a paired body part and absent for an
    unpaired one (PS3.3 C.7.3.1)."""
    values = [str(source.get(k, "") or "").strip().upper() for k in ("ImageLaterality", "Laterality")]
    if "Laterality" in image:
        del image.Laterality
    side = next((v for v in values if v in ("R", "L")), None)
    if side is not None:
        image.Laterality = side
    elif values[0] in ("B", "U"):
        image.ImageLaterality = values[0]
    elif paired_body_part:
        image.Laterality = None


def _copy_patient_and_study(source: Dataset, image: hd.sc.SCImage) -> None:
    """The source's Patient, General Study and Patient Study attributes (StudyDescription, IssuerOfPatientID,
    PatientAge ...), as SEG and SR carry them, and its BodyPartExamined, which hanging protocols select by.
    ``source`` is a ``result_source``: its values are valid."""
    image.copy_patient_and_study_information(source)
    body_part = source.get("BodyPartExamined")
    if body_part:
        try:
            image.BodyPartExamined = valid_value("BodyPartExamined", "CS", body_part)
        except ValueError:
            pass  # Type 3: an invalid one is left out


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
    series_description: str | None = None,
    source_frame: int | None = None,
    sop_instance_uid: str | None = None,
    series_datetime: datetime | None = None,
    paired_body_part: bool = True,
) -> hd.sc.SCImage:
    """A Secondary Capture of ``rgb`` (H, W, 3) or grayscale (H, W) uint8 in the source's study.

    The image is marked DERIVED with burnt-in annotation, conversion type WSD, and references ``source``
    (Source Image Sequence; ``source_frame``, 1-based, for a multi-frame source) so viewers can link it back.
    ``source`` needs no pixel data. ``description`` says what this image shows (Derivation Description);
    ``series_description`` (default ``description``) is the same for every image of the series.
    ``paired_body_part``: whether the source shows a paired organ (breast, hand), which needs a Laterality.
    """
    pixels, photometric = _pixel_array(rgb)
    source = result_source(source)
    orientation = _patient_orientation(source)
    same_grid = pixels.shape[:2] == (source.get("Rows"), source.get("Columns"))
    # only a PixelSpacing the source states itself; a malformed one is left out, not a failed overlay
    spacing = pixel_spacing(source, ("PixelSpacing",)) if same_grid else None
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
        pixel_spacing=spacing,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[provenance.contributing_equipment()],
        series_description=(series_description or description)[:64],
        **series_date_time(series_datetime),
        **provenance.equipment_kwargs(),
    )
    _copy_patient_and_study(source, image)
    # Type 2: empty when the source does not define its orientation (better than a guess).
    image.PatientOrientation = orientation
    _copy_laterality(source, image, paired_body_part)
    _keep_lossy_flag(source, image)
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
    """Write a uint8 (H, W) or (H, W, 3) image as PNG (the non-DICOM twin of a Secondary Capture).

    zlib level 1: a 2500 x 2000 RGB mammography overlay takes 0.44 s instead of 1.9 s at PIL's default 6, for
    about 8% more bytes (still lossless).
    """
    pixels, _ = _pixel_array(rgb)
    path = Path(path)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)
    return path


@cache
def _jet_table() -> np.ndarray:
    """matplotlib's jet colour table, (N, 3) float32 in 0..255."""
    jet = colormaps["jet"]
    return (jet(np.arange(jet.N))[:, :3] * 255.0).astype(np.float32)


def _blend_jet(display: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """``display`` (uint8) with ``heat`` ([0, 1]) blended in as matplotlib's jet colours at opacity 0.45 x heat.

    The colours come from jet's own 256-entry table, indexed as ``Colormap.__call__`` indexes floats (the same
    colours), one channel at a time in float32: a 3328 x 2560 image in ~0.3 s instead of 2.2 s through the
    colour map object (which makes a float64 RGBA copy of the whole image).
    """
    table = _jet_table()
    heat = np.asarray(heat, dtype=np.float32)
    index = np.multiply(heat, len(table)).astype(np.intp)
    np.clip(index, 0, len(table) - 1, out=index)
    alpha = heat * np.float32(0.45)
    kept = display.astype(np.float32)
    kept *= 1.0 - alpha
    rgb = np.empty((*display.shape, 3), dtype=np.uint8)
    for channel in range(3):
        colour = np.take(table[:, channel], index)
        colour *= alpha
        colour += kept
        rgb[..., channel] = np.clip(colour, 0, 255, out=colour)
    return rgb


def heat_map_overlay(
    display: np.ndarray,
    heat: np.ndarray | None,
    lines: list[str],
    *,
    box_rc: tuple[int, int, int, int] | None = None,
    text_corner: str = "left",
) -> np.ndarray:
    """An RGB uint8 picture for a Secondary Capture: ``heat`` ([0, 1], the display's grid) blended as a jet
    colour map on the uint8 ``display`` image, an optional box (row0, col0, row1, col1; inclusive-exclusive)
    outlined (over the text), and ``lines`` of text in the top ``text_corner`` ("left" or "right")."""
    if heat is None:
        rgb = np.repeat(display[..., None], 3, axis=2)
    else:
        rgb = _blend_jet(display, heat)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, int(min(image.size) * 0.028)))
    margin = max(4, int(min(image.size) * 0.01))
    boxes = [draw.textbbox((0, 0), line, font=font) for line in lines]
    width = max((b[2] - b[0] for b in boxes), default=0) + 2 * margin
    left = 0 if text_corner == "left" else max(0, image.size[0] - width)
    if boxes:
        height = sum(b[3] - b[1] for b in boxes) + margin * (len(lines) + 1)
        draw.rectangle((left, 0, left + width, height), fill=(0, 0, 0))
    y = margin
    for line, box in zip(lines, boxes):
        draw.text((left + margin, y - box[1]), line, fill=(255, 255, 0), font=font)
        y += box[3] - box[1] + margin
    if box_rc is not None:
        r0, c0, r1, c1 = box_rc
        draw.rectangle((c0, r0, c1 - 1, r1 - 1), outline=(0, 255, 0), width=max(1, min(image.size) // 200))
    return np.asarray(image)
