"""Engine: start-up loading and status, the report envelope, and failures."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest
import torch

from dicom_io.types import Study
from inference.bundle import Bundle
from inference.engine import BundleState, Engine, result_provenance
from inference.errors import BundleError, RetryableInferenceError
from inference.findings import RESEARCH_USE_DISCLAIMER, SYNTHETIC_TRAINING_DISCLAIMER, ReportStatus
from inference.registry import Registry
from inference.runners import FakeRunner
from inference.tasks import TASKS
from inference.tasks.base import TaskContext
from inference.tasks.segmentation import SegmentationTask, segment_volume

CPU = torch.device("cpu")


@pytest.fixture
def sphere(kit, monkeypatch):
    """A sphere volume the segmentation task 'reads' instead of decoding DICOM (dicom_io's job)."""
    volume, _ = kit.sphere_volume()
    monkeypatch.setattr(
        SegmentationTask, "run", lambda self, bundle, study, series, ctx: segment_volume(bundle, volume, ctx)
    )
    return volume


def _run(engine: Engine, volume, workdir, name="seg"):
    bundle = engine.registry.get(name)
    engine.ensure_loaded(bundle)
    bundle.runner = FakeRunner(lambda x: torch.cat([-(x[:, :1] - 0.5) * 20, (x[:, :1] - 0.5) * 20], dim=1))
    study = Study(volume.series.study_instance_uid, [volume.series])
    return engine.run(study, bundle, [volume.series], TaskContext(device=CPU, workdir=workdir))


def test_load_all_loads_and_warms_up_every_bundle(kit):
    kit.bundle("one")
    kit.bundle("two", weights="torchscript")
    engine = Engine(Registry([kit.models]), "cpu")
    assert not engine.ready
    status = engine.load_all()
    assert engine.ready
    assert {name: s.state for name, s in status.items()} == {
        "one": BundleState.ready,
        "two": BundleState.ready,
    }
    assert all(s.warmup_s > 0 and s.error is None for s in status.values())


def test_load_all_records_failures_per_bundle_and_is_not_ready(kit):
    kit.bundle("good")
    kit.bundle("pinned", radinfer=kit.radinfer(weights_sha256="0" * 64))
    kit.bundle("no_task", radinfer=kit.radinfer(task="does_not_exist"))
    kit.bundle("invalid", radinfer={"task": "segmentation"})
    engine = Engine(Registry([kit.models]), "cpu")
    status = engine.load_all()
    assert not engine.ready
    assert status["good"].state is BundleState.ready
    assert status["pinned"].state is BundleState.failed and "pins 0000" in status["pinned"].error
    assert "task 'does_not_exist' in radinfer.json is unknown; known tasks:" in status["no_task"].error
    assert status["invalid"].state is BundleState.failed and "intended_use" in status["invalid"].error
    with pytest.raises(BundleError, match="pins"):
        engine.ensure_loaded(engine.registry.get("pinned"))


def test_run_wraps_task_result_in_report_envelope(kit, sphere):
    path = kit.bundle("seg")
    engine = Engine(Registry([kit.models]), "cpu")
    report = _run(engine, sphere, kit.workdir)

    assert report.status is ReportStatus.complete
    assert report.study_instance_uid == sphere.series.study_instance_uid
    assert [s.series_instance_uid for s in report.series] == [sphere.series.series_instance_uid]
    assert report.series[0].num_instances == sphere.shape[0] and report.series[0].modality == "CT"
    model = report.model
    assert model.name == "seg" and model.version == "0.1.0" and model.task == "segmentation"
    assert model.weights_sha256 == hashlib.sha256((path / "models/model.pt").read_bytes()).hexdigest()
    assert model.trained_on_synthetic_data and model.disclaimer == SYNTHETIC_TRAINING_DISCLAIMER
    assert (model.runner, model.device) == (engine.registry.get("seg").runner.name, "cpu") and model.runner
    assert SYNTHETIC_TRAINING_DISCLAIMER in report.disclaimer and RESEARCH_USE_DISCLAIMER in report.disclaimer
    assert [f.label for f in report.findings] == ["sphere"]
    assert report.artifacts[0].name == "mask.npz"
    assert report.artifacts[0].size_bytes == (kit.workdir / "mask.npz").stat().st_size > 0
    assert {"preprocess", "inference", "postprocess", "findings", "task_total"} <= set(report.timings_s)
    assert report.model_dump_json()


def test_run_without_synthetic_flag_has_no_synthetic_disclaimer(kit, sphere):
    kit.bundle("seg", radinfer=kit.radinfer(trained_on_synthetic_data=False))
    report = _run(Engine(Registry([kit.models]), "cpu"), sphere, kit.workdir)
    assert not report.model.trained_on_synthetic_data
    assert SYNTHETIC_TRAINING_DISCLAIMER not in report.disclaimer + report.model.disclaimer


@pytest.mark.parametrize("synthetic", [True, False], ids=["synthetic", "not-synthetic"])
def test_dicom_results_state_the_reports_whole_disclaimer(kit, synthetic):
    """The DICOM statement says research use only / not for clinical use, like the report, not only that the
    model was trained on synthetic data (model.disclaimer)."""
    kit.bundle("seg", radinfer=kit.radinfer(trained_on_synthetic_data=synthetic))
    engine = Engine(Registry([kit.models]), "cpu")
    bundle = engine.registry.get("seg")
    engine.ensure_loaded(bundle)
    statement = result_provenance(bundle).statement()
    assert statement.startswith(RESEARCH_USE_DISCLAIMER)
    assert (SYNTHETIC_TRAINING_DISCLAIMER in statement) == synthetic
    assert statement.count("synthetic") == int(synthetic)


def test_run_cuda_out_of_memory_is_retryable(kit, sphere, monkeypatch):
    kit.bundle("seg")

    def out_of_memory(self, bundle, study, series, ctx):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(SegmentationTask, "run", out_of_memory)
    with pytest.raises(RetryableInferenceError, match="retried"):
        _run(Engine(Registry([kit.models]), "cpu"), sphere, kit.workdir)


def test_tasks_table_imports_task_by_module_name():
    assert "segmentation" in TASKS and "base" not in TASKS
    assert TASKS["segmentation"] is SegmentationTask
    with pytest.raises(KeyError, match="Unknown task 'nope'"):
        TASKS["nope"]


def test_run_mask_artifact_matches_report_geometry(kit, sphere):
    kit.bundle("seg")
    report = _run(Engine(Registry([kit.models]), "cpu"), sphere, kit.workdir)
    saved = np.load(kit.workdir / "mask.npz")
    k, j, i = np.argwhere(saved["mask"] == 1).mean(axis=0)
    np.testing.assert_allclose(report.findings[0].location.voxel_kji, (k, j, i), atol=1e-3)


def test_status_answers_while_a_bundle_is_loading(kit, monkeypatch):
    kit.bundle("slow")
    engine = Engine(Registry([kit.models]), "cpu")
    entered, release = threading.Event(), threading.Event()
    original_load = Bundle.load

    def slow_load(self, device):
        entered.set()
        assert release.wait(10)
        original_load(self, device)

    monkeypatch.setattr(Bundle, "load", slow_load)
    loader = threading.Thread(target=engine.load_all)
    loader.start()
    try:
        assert entered.wait(10)
        assert engine.status()["slow"].state is BundleState.pending
        assert not engine.ready
    finally:
        release.set()
        loader.join(10)
    assert engine.ready
