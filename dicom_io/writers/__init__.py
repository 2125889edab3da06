"""DICOM result objects built with highdicom: Secondary Capture (sc), Segmentation (seg), TID 1500 SR (sr)."""

from dicom_io.writers.provenance import ModelProvenance

__all__ = ["ModelProvenance"]
