"""The nodule delineations run on several threads and give what one thread gives."""

from __future__ import annotations

import json

import numpy as np
import torch

from dicom_io.limits import Limits
from dicom_io.reader import read_headers
from dicom_io.volume import build_volume
from inference.tasks.lung_nodules import Delineation, _round_components, outline_nodules
from inference.tasks.segmentation import components

from .conftest import BUNDLE


def test_outlines_on_three_threads_equal_one_thread(lung_phantom, write_phantom):
    volume = build_volume(read_headers(write_phantom("threads"), Limits()).series[0], Limits())
    mask = lung_phantom.labels > 0
    assert volume.shape == mask.shape
    found = _round_components(components(mask, volume, min_volume_mm3=8.0), mask, volume, np.inf)
    settings = Delineation.from_settings(json.loads((BUNDLE / "configs" / "radinfer.json").read_text()))
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected = outline_nodules(found, volume, settings)
        torch.set_num_threads(3)
        got = outline_nodules(found, volume, settings)
    finally:
        torch.set_num_threads(previous)
    assert len(found) == 3 and len(expected) == 3
    assert [o.component for o in got] == [o.component for o in expected]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.solid, b.solid)
