"""Project-wide fixtures (owned by dicom_io): default limits and a small synthetic CT series; a bundle stand-in."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dicom_io.limits import Limits
from dicom_io.synthetic import write_ct_series
from inference.bundle import Bundle


@pytest.fixture
def limits() -> Limits:
    return Limits()


@pytest.fixture
def small_ct_series(tmp_path: Path) -> list[Path]:
    """8 synthetic CT slices of 32x32 air (-1000 HU) with a 100 HU block at k=3..4, j=10..14, i=12..16."""
    hu = np.full((8, 32, 32), -1000.0, dtype=np.float32)
    hu[3:5, 10:15, 12:17] = 100.0
    return write_ct_series(hu, tmp_path / "ct", spacing=(2.0, 0.8, 0.8), origin=(-12.8, -12.8, 40.0))


class StubBundle(SimpleNamespace):
    """A bundle stand-in with the attributes a test gives it, and Bundle's own ``runs_on``."""

    runs_on = Bundle.runs_on
