"""The shipped lung_nodule bundle on a phantom the other tests do not use: a non-square matrix written feet
first (slice positions decreasing along the files' normal, rows right to left) without PatientSex and
PatientBirthDate. The SR's numbers must be the findings JSON's, and the SEG's frames must lie on their source
slices."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from dicom_io.limits import Limits
from dicom_io.synthetic import write_ct_series
from inference.engine import Engine
from inference.pipeline import analyze
from inference.registry import Registry

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "lung_nodule"
SHAPE, SPACING = (36, 160, 208), (2.0, 0.75, 0.75)
NODULE = {"center_xyz": (-34.0, 0.0, 10.0), "diameter_mm": 11.0, "type": "solid", "rotate": False,
          "elongation": 1.0, "lobulation": 0.0}
SR_NAMES = {"Long axis": "long_axis", "Short axis": "short_axis", "Diameter": "mean_diameter", "Volume": "volume",
            "Mean Attenuation Coefficient": "mean_intensity"}


def _phantom():
    spec = importlib.util.spec_from_file_location("lung_nodule_phantom_unseen", BUNDLE / "scripts" / "phantom.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.generate_phantom(11, shape=SHAPE, spacing=SPACING, nodules=[NODULE], noise_sd=15.0)


@pytest.fixture(scope="module")
def feet_first(tmp_path_factory):
    phantom = _phantom()
    (nk, _, ni), (dk, _, di) = phantom.hu.shape, phantom.spacing
    origin = np.add(phantom.origin, [(ni - 1) * di, 0.0, (nk - 1) * dk])  # the last slice's right-most voxel
    source = tmp_path_factory.mktemp("ffs")
    write_ct_series(phantom.hu[::-1, :, ::-1], source, spacing=phantom.spacing, origin=origin,
                    row_direction=(-1, 0, 0), column_direction=(0, 1, 0), shuffle=True,
                    tags={"PatientPosition": "FFS"})
    for path in source.iterdir():
        ds = dcmread(path)
        del ds.PatientSex, ds.PatientBirthDate
        ds.save_as(path)
    models = tmp_path_factory.mktemp("models")
    (models / BUNDLE.name).symlink_to(BUNDLE)
    engine = Engine(Registry([models]), "cpu")
    engine.load_all()
    workdir = tmp_path_factory.mktemp("job")
    report = analyze([source], engine, model="lung_nodule", limits=Limits(), workdir=workdir)
    sources = {ds.SOPInstanceUID: ds for ds in (dcmread(p, stop_before_pixels=True) for p in source.iterdir())}
    return report, workdir, sources


def test_the_nodule_is_found_at_its_place_and_size(feet_first):
    report, _, _ = feet_first
    nearest = min(report.findings, key=lambda f: np.linalg.norm(np.subtract(f.location.patient_lps_mm,
                                                                            (-34.0, 0.0, 10.0))))
    values = {m.name: m.value for m in nearest.measurements}
    assert np.linalg.norm(np.subtract(nearest.location.patient_lps_mm, (-34.0, 0.0, 10.0))) < 1.5
    assert values["mean_diameter"] == pytest.approx(11.0, abs=1.0)
    assert nearest.attributes["side"] == "right"


def test_sr_numbers_are_the_findings_json_values(feet_first):
    report, workdir, sources = feet_first
    sr = hd.sr.srread(workdir / "sr.dcm")
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(report.findings) > 0
    for group, finding in zip(groups, report.findings, strict=True):
        expected = {m.name: m.value for m in finding.measurements}
        written = {SR_NAMES[m.name.meaning]: float(m.value) for m in group.get_measurements()}
        assert written == {name: expected[name] for name in written}
        assert set(written) == set(SR_NAMES.values())
    assert sr.PatientSex in (None, "") and sr.StudyInstanceUID == next(iter(sources.values())).StudyInstanceUID
    assert "synthetic" in str(dcmread(workdir / "sr.dcm")).lower()


def test_seg_frames_lie_on_their_source_slices(feet_first):
    _, workdir, sources = feet_first
    seg = hd.seg.segread(workdir / "seg.dcm")
    first = next(iter(sources.values()))
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose([float(v) for v in orientation], [float(v) for v in first.ImageOrientationPatient])
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in sources[uid].ImagePositionPatient], atol=1e-3)
