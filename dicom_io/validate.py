"""DICOM conformance check with David Clunie's ``dciodvfy`` (Debian/Ubuntu package ``dicom3tools``)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

EXECUTABLE = "dciodvfy"


@dataclass
class ValidationResult:
    """dciodvfy's findings: ``errors`` (IOD violations, or an aborted run) and ``warnings`` (style or optional
    issues)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def available() -> bool:
    """True when ``dciodvfy`` is on PATH (install: ``apt-get install dicom3tools``)."""
    return shutil.which(EXECUTABLE) is not None


def _parse(output: str) -> ValidationResult:
    result = ValidationResult()
    for line in output.splitlines():
        line = line.strip()
        if line.startswith(("Error", "Abort")):
            result.errors.append(line)
        elif line.startswith("Warning"):
            result.warnings.append(line)
    return result


def _run(path: Path, timeout_s: float) -> ValidationResult:
    proc = subprocess.run(
        [EXECUTABLE, "-new", str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout_s,
        check=False,
    )
    return _parse(proc.stdout + "\n" + proc.stderr)


def dciodvfy(path_or_dataset: Path | str | Dataset, *, timeout_s: float = 60.0) -> ValidationResult:
    """Validate a DICOM file (or an in-memory dataset, written to a temporary file) against its IOD."""
    if not available():
        raise RuntimeError(
            f"{EXECUTABLE} is not installed; install the dicom3tools package to validate DICOM."
        )
    if isinstance(path_or_dataset, Dataset):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "object.dcm"
            path_or_dataset.save_as(path, enforce_file_format=True)
            return _run(path, timeout_s)
    return _run(Path(path_or_dataset), timeout_s)
