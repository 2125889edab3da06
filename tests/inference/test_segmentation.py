"""The generic 3D path: zoo-style configs on our volumes, geometry back on the source grid, findings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.bundle import Bundle
from inference.findings import ReportStatus
from inference.runners import FakeRunner
from inference.tasks.base import TaskContext
from inference.tasks.segmentation import (
    components,
    ras_affine,
    run_bundle_3d,
    segment_volume,
    volume_to_metatensor,
)

CPU = torch.device("cpu")
OBLIQUE_AXES = ((0.0, 0.0, -1.0), (0.0, np.cos(0.3), np.sin(0.3)), (1.0, 0.0, 0.0))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _loaded(kit, runner=None, **bundle_args) -> Bundle:
    bundle = Bundle(kit.bundle(**bundle_args))
    bundle.load(CPU)
    if runner is not None:
        bundle.runner = runner
    return bundle


def test_volume_to_metatensor_is_channel_first_with_ras_affine(kit):
    volume = kit.make_volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    image = volume_to_metatensor(volume)
    assert tuple(image.shape) == (1, 2, 3, 4)
    lps = volume.index_to_lps((1, 2, 3))
    ras = image.affine.numpy() @ np.array([1, 2, 3, 1.0])
    np.testing.assert_allclose(ras[:3], lps * np.array([-1, -1, 1]))
    assert image.meta["filename_or_obj"] == volume.series.series_instance_uid
    assert image.meta["original_channel_dim"] == 0


def test_zoo_style_config_with_random_unet_returns_source_geometry(kit):
    bundle = _loaded(kit)
    volume, _ = kit.sphere_volume()
    output = run_bundle_3d(bundle, volume, TaskContext(device=CPU, workdir=kit.workdir))
    assert output.labels.shape == volume.shape
    assert set(np.unique(output.labels)) <= {0, 1}
    assert output.probabilities.shape == (1, *volume.shape)  # foreground only: softmax background not kept
    np.testing.assert_array_equal(output.probability(1), output.probabilities[0])
    assert output.probability(0) is None and output.probability(2) is None
    assert 0.0 <= output.probabilities.min() and output.probabilities.max() <= 1.0


@pytest.mark.parametrize(
    "axes", [((0, 0, -1), (0, 1, 0), (1, 0, 0)), OBLIQUE_AXES], ids=["feet-first-axial", "oblique-rows"]
)
@pytest.mark.parametrize("invert", [True, False], ids=["invertd", "no-invertd-resampled-by-us"])
def test_perfect_runner_finds_sphere_at_true_lps(kit, axes, invert):
    inference = kit.inference()
    if not invert:
        inference["postprocessing"]["transforms"] = [
            t for t in inference["postprocessing"]["transforms"] if t["_target_"] != "Invertd"
        ]
    runner = FakeRunner(kit.threshold_logits)
    bundle = _loaded(kit, runner, inference=inference)
    center = (3.0, -4.0, 6.0)
    volume, truth = kit.sphere_volume(center_lps=center, radius_mm=9.0, axes=axes)
    ctx = TaskContext(device=CPU, workdir=kit.workdir)

    output = run_bundle_3d(bundle, volume, ctx)

    assert runner.calls > 0
    assert output.labels.shape == volume.shape
    assert _dice(output.labels == 1, truth) > 0.9
    found = components(output.labels == 1, volume)
    assert len(found) == 1
    assert np.linalg.norm(np.subtract(found[0].centroid_lps, center)) < max(volume.spacing)
    assert found[0].volume_mm3 == pytest.approx(4 / 3 * np.pi * 9.0**3, rel=0.15)
    assert set(ctx.timings_s) >= {"preprocess", "inference", "postprocess"}


def test_components_measures_two_blobs_largest_first(kit):
    mask = np.zeros((10, 12, 14), dtype=bool)
    mask[1:3, 1:4, 1:5] = True  # 2 x 3 x 4 = 24 voxels
    mask[6:9, 6:10, 8:13] = True  # 3 x 4 x 5 = 60 voxels
    volume = kit.make_volume(np.where(mask, 50.0, -100.0), spacing=(2.0, 1.0, 0.5))
    probability = np.where(mask, 0.8, 0.1)
    big, small = components(mask, volume, probability=probability)
    assert (big.voxels, small.voxels) == (60, 24)
    assert big.volume_mm3 == pytest.approx(60 * 2.0 * 1.0 * 0.5)
    assert big.bbox_kji == ((6, 6, 8), (9, 10, 13))
    assert big.centroid_kji == pytest.approx((7.0, 7.5, 10.0))
    np.testing.assert_allclose(big.centroid_lps, volume.index_to_lps((7.0, 7.5, 10.0)))
    assert big.mean_intensity == pytest.approx(50.0)
    assert big.mean_probability == pytest.approx(0.8)
    assert [c.voxels for c in components(mask, volume, min_volume_mm3=25.0)] == [60]


def test_segment_volume_reports_findings_and_writes_mask_npz(kit):
    bundle = _loaded(kit, FakeRunner(kit.threshold_logits))
    center = (0.0, -2.0, 5.0)
    volume, truth = kit.sphere_volume(center_lps=center)
    ctx = TaskContext(device=CPU, workdir=kit.workdir)

    result = segment_volume(bundle, volume, ctx)

    assert result.status is ReportStatus.complete
    assert [f.label for f in result.findings] == ["sphere"]
    finding = result.findings[0]
    assert finding.code.meaning == "Tissue" and finding.segment_number == 1
    assert np.linalg.norm(np.subtract(finding.location.patient_lps_mm, center)) < max(volume.spacing)
    assert 0.5 < finding.confidence <= 1.0
    assert finding.measurements[1].unit == "[hnsf'U]" and finding.measurements[1].value > 0
    slice_k = round(finding.location.voxel_kji[0])
    assert finding.location.source.sop_instance_uid == volume.slice_refs[slice_k].sop_instance_uid
    assert result.summary["sphere_components"] == 1
    saved = np.load(kit.workdir / "mask.npz")
    assert saved["mask"].dtype == np.uint8 and saved["mask"].shape == volume.shape
    np.testing.assert_array_equal(saved["affine"], volume.affine)
    assert _dice(saved["mask"] == 1, truth) > 0.9
    assert [a.name for a in result.artifacts] == ["mask.npz"]


def test_ras_affine_flips_x_and_y_only(kit):
    volume = kit.make_volume(np.zeros((2, 2, 2)))
    np.testing.assert_allclose(ras_affine(volume)[2], volume.affine[2])
    np.testing.assert_allclose(ras_affine(volume)[:2], -volume.affine[:2])


def test_orientationd_sees_patient_right_and_head_at_higher_ras_indices(kit):
    """DICOM LPS must reach MONAI as RAS: a left/right or head/feet swap would reverse these orders."""
    inference = kit.inference()
    inference["preprocessing"]["transforms"] = [
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    ]
    bundle = Bundle(kit.bundle(inference=inference))
    volume = kit.make_volume(np.zeros((12, 16, 16)), spacing=(2.0, 2.0, 2.0))
    markers = {
        "patient_right": (-8.0, -20.0, 20.0),
        "patient_left": (8.0, -20.0, 20.0),
        "head": (0.0, -10.0, 24.0),
    }
    for value, lps in enumerate(markers.values(), start=1):
        k, j, i = np.rint(volume.lps_to_index(lps)).astype(int)
        volume.array[k, j, i] = value
    image = bundle.get("preprocessing")({"image": volume_to_metatensor(volume)})["image"][0].numpy()
    where = {name: np.argwhere(image == value)[0] for value, name in enumerate(markers, start=1)}
    assert where["patient_right"][0] > where["patient_left"][0]
    assert where["head"][2] > where["patient_left"][2]


def test_run_bundle_3d_leaves_volume_values_untouched_by_in_place_transforms(kit):
    inference = kit.inference()
    inference["preprocessing"]["transforms"].insert(
        1, {"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True}
    )
    bundle = _loaded(kit, FakeRunner(kit.threshold_logits), inference=inference)
    volume, _ = kit.sphere_volume()
    before = volume.array.copy()
    run_bundle_3d(bundle, volume, TaskContext(device=CPU, workdir=kit.workdir))
    np.testing.assert_array_equal(volume.array, before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_zoo_style_run_on_cuda_matches_cpu(kit):
    volume, _ = kit.sphere_volume()
    outputs = []
    for device in (CPU, torch.device("cuda")):
        bundle = Bundle(kit.bundle(f"seg_{device.type}"))
        bundle.load(device)
        bundle.warmup()
        outputs.append(run_bundle_3d(bundle, volume, TaskContext(device=device, workdir=kit.workdir)))
    np.testing.assert_allclose(outputs[0].probabilities, outputs[1].probabilities, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_3d_job_that_fits_keeps_its_windows_on_the_gpu(kit):
    """Resident: the runner gets window batches already on the GPU (no host round trip per batch)."""
    bundle = Bundle(kit.bundle("seg_resident"))
    bundle.load(torch.device("cuda"))
    seen = []
    runner = bundle.runner

    def spy(batch):
        seen.append(batch.device.type)
        return runner(batch)

    bundle.runner = spy
    volume, _ = kit.sphere_volume()
    output = run_bundle_3d(bundle, volume, TaskContext(device=torch.device("cuda"), workdir=kit.workdir))
    assert seen and set(seen) == {"cuda"}
    assert isinstance(output.labels, np.ndarray) and output.labels.shape == volume.shape


def test_postprocessing_that_reads_the_image_still_sees_its_voxels(kit):
    """The model-grid image's voxels are dropped before post-processing only when no transform may read them;
    a bundle whose post-processing uses the image gets it whole, and the outputs are the same either way."""
    plain = _loaded(kit, FakeRunner(kit.threshold_logits))
    inference = kit.inference()
    inference["postprocessing"]["transforms"].insert(
        0, {"_target_": "Lambda", "func": "$lambda d: d | {'pred': d['pred'] * (d['image'].sum() > 0)}"}
    )  # zeroes the prediction if the image's voxels were gone
    reading = _loaded(kit, FakeRunner(kit.threshold_logits), inference=inference, name="reads-image")
    volume, _ = kit.sphere_volume()
    outputs = [run_bundle_3d(b, volume, TaskContext(device=CPU, workdir=kit.workdir)) for b in (plain, reading)]
    np.testing.assert_array_equal(outputs[0].labels, outputs[1].labels)
    np.testing.assert_array_equal(outputs[0].probabilities, outputs[1].probabilities)
    assert outputs[0].labels.any()


def test_a_cancelled_job_stops_within_a_window_batch() -> None:
    """Each window batch reports progress first, so a cancel (raised by the progress callback) ends the sliding
    window at once instead of after the whole volume."""
    from monai.inferers import SlidingWindowInferer

    from inference.tasks.base import Cancelled
    from inference.tasks.segmentation import model_output
    from tests.conftest import StubBundle

    batches: list[int] = []

    def runner(batch: torch.Tensor) -> torch.Tensor:
        batches.append(len(batch))
        return torch.zeros(len(batch), 2, *batch.shape[2:])

    bundle = StubBundle(name="b", device=CPU, runner=runner, output_channels=lambda: 2)
    inferer = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=1, overlap=0.0)
    image = torch.rand(1, 32, 32, 32)  # 64 windows
    assert model_output(bundle, inferer, image, (32, 32, 32)).shape == (2, 32, 32, 32) and len(batches) == 64
    batches.clear()
    reports = []

    def progress() -> None:
        reports.append(1)
        if len(reports) == 3:
            raise Cancelled("job cancelled")

    with pytest.raises(Cancelled):
        model_output(bundle, inferer, image, (32, 32, 32), on_batch=progress)
    assert len(batches) == 2  # the third batch never ran
