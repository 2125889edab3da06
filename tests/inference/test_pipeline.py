"""pipeline.analyze end to end on synthetic DICOM: unpack -> headers -> route -> segmentation -> report."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from dicom_io.limits import Limits
from dicom_io.synthetic import write_ct_series
from inference.engine import Engine
from inference.errors import ModelNotFoundError, NoModelForStudyError
from inference.pipeline import analyze
from inference.registry import Registry
from inference.runners import FakeRunner

CENTER_LPS = (4.0, -6.0, 12.0)


@pytest.fixture
def ct_sphere(kit, tmp_path):
    """A synthetic CT series (files) with a 9 mm sphere at CENTER_LPS, slices written in shuffled order."""
    spacing, origin = (2.5, 0.9, 0.8), (-16.0, -26.0, -10.0)
    shape = (16, 40, 40)
    kji = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).astype(float)
    lps = np.asarray(origin) + kji[..., ::-1] * np.asarray(spacing[::-1])  # axial: i -> x, j -> y, k -> z
    hu = np.where(np.linalg.norm(lps - CENTER_LPS, axis=-1) <= 9.0, 164, -57).astype(np.int16)
    return write_ct_series(hu, tmp_path / "ct", spacing=spacing, origin=origin, shuffle=True)


@pytest.fixture
def engine(kit):
    kit.bundle("seg")
    kit.bundle("bone_age", radinfer=kit.radinfer(selection={"modalities": ["DX"], "dimensions": 2}))
    engine = Engine(Registry([kit.models]), "cpu")
    engine.load_all()
    engine.registry.get("seg").runner = FakeRunner(kit.threshold_logits)
    return engine


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_analyze_finds_sphere_in_synthetic_ct(tmp_path, ct_sphere, engine, as_zip):
    inputs = [ct_sphere[0].parent]
    if as_zip:
        archive = tmp_path / "study.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for path in ct_sphere:
                zf.write(path, f"dicom/{path.name}")
        inputs = [archive]
    stages = []
    workdir = tmp_path / "job"

    report = analyze(inputs, engine, limits=Limits(), workdir=workdir, progress=lambda s, f: stages.append(s))

    assert report.model.name == "seg"
    assert report.series[0].num_instances == len(ct_sphere)
    assert len(report.findings) == 1
    assert np.linalg.norm(np.subtract(report.findings[0].location.patient_lps_mm, CENTER_LPS)) < 2.5
    assert report.findings[0].measurements[0].value == pytest.approx(4 / 3 * np.pi * 9.0**3, rel=0.15)
    assert {"unpack", "read_headers", "route", "load_volume", "inference"} <= set(stages)
    assert (workdir / "mask.npz").is_file()
    assert [p.name for p in workdir.iterdir()] == ["mask.npz"]


def test_analyze_named_unknown_model_suggests_name(tmp_path, ct_sphere, engine):
    with pytest.raises(ModelNotFoundError, match="did you mean 'seg'"):
        analyze([ct_sphere[0].parent], engine, model="segg", limits=Limits(), workdir=tmp_path / "job")


def test_analyze_named_model_that_rejects_study_explains(tmp_path, ct_sphere, engine):
    with pytest.raises(
        NoModelForStudyError, match=r"bone_age: series .* \(CT\) rejected: modality CT not in \[DX\]"
    ):
        analyze([ct_sphere[0].parent], engine, model="bone_age", limits=Limits(), workdir=tmp_path / "job")
