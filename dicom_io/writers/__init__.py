"""DICOM result objects built with highdicom: Secondary Capture (sc), Segmentation (seg), TID 1500 SR (sr)."""

from dicom_io.writers.provenance import ModelProvenance
from dicom_io.writers.sc import save_png, secondary_capture
from dicom_io.writers.seg import SegmentSpec, binary_segmentation
from dicom_io.writers.sr import MeasurementGroupSpec, PlanarROI, SegmentROI, WholeImage, measurement_report

__all__ = [
    "MeasurementGroupSpec",
    "ModelProvenance",
    "PlanarROI",
    "SegmentROI",
    "SegmentSpec",
    "WholeImage",
    "binary_segmentation",
    "measurement_report",
    "save_png",
    "secondary_capture",
]
