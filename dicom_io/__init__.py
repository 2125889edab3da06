"""DICOM in and out: reading, limits, series grouping, volumes, writers. No HTTP, no torch."""
