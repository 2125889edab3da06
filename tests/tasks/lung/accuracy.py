"""The issue's accuracy requirements on a findings report of the conftest phantom, shared by the pipeline and
HTTP tests: each constructed nodule found at the right place (within one voxel), long and short axes within
1 mm, volume within 30 %, and type, side and Lung-RADS category as constructed."""

from __future__ import annotations

import numpy as np
import pytest

from inference.findings import Finding, FindingsReport


def match(report: FindingsReport, truth) -> Finding:
    """The finding nearest to a constructed nodule's centre."""
    return min(report.findings, key=lambda f: np.linalg.norm(np.subtract(f.location.patient_lps_mm,
                                                                          truth.center_lps)))


def assert_each_nodule_found_within_one_voxel(report: FindingsReport, phantom, specs: list[dict]) -> None:
    assert len(report.findings) == len(specs)
    for truth in phantom.nodules:
        offset_voxels = np.abs(np.subtract(match(report, truth).location.voxel_kji, truth.center_kji))
        assert np.all(offset_voxels <= 1.0), (truth.type, offset_voxels)


def assert_nodules_measured_as_constructed(report: FindingsReport, phantom, specs: list[dict]) -> None:
    for truth, spec in zip(phantom.nodules, specs, strict=True):
        found = match(report, truth)
        values = {m.name: m.value for m in found.measurements}
        assert found.attributes["type"] == spec["type"]
        assert found.attributes["side"] == spec["side"]
        assert found.attributes["lung_rads_suggestion"] == spec["category"]
        assert values["long_axis"] == pytest.approx(truth.diameter_mm, abs=1.0)
        assert values["short_axis"] == pytest.approx(truth.diameter_mm, abs=1.0)
        assert values["volume"] == pytest.approx(np.pi / 6 * truth.diameter_mm**3, rel=0.3)
        assert 0.5 <= found.confidence <= 1.0
    assert report.summary["lung_rads_suggestion"] == "4A"
    assert "suggest" in report.summary["lung_rads_note"]
    assert report.model.trained_on_synthetic_data
