"""Bounds applied to untrusted input before any pixel is decoded."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Upper bounds for one submitted study. The defaults fit a 1,000-slice CT or a large mammogram.

    Each field is the setting ``RADINFER_<FIELD>`` (``max_request_bytes``: ``RADINFER_MAX_UPLOAD_BYTES``), the
    name error messages tell users to raise.
    """

    max_request_bytes: int = 2 * 1024**3
    max_files: int = 5000
    max_zip_entries: int = 5000
    max_zip_ratio: float = 200.0
    max_unpacked_bytes: int = 4 * 1024**3
    max_pixel_bytes_per_instance: int = 512 * 1024**2
    max_pixel_bytes_total: int = 4 * 1024**3
    max_rows: int = 16384
    max_columns: int = 16384
    max_frames: int = 4096
    max_sequence_depth: int = 12
    max_inflated_bytes: int = 1024**3
