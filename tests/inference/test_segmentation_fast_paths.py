"""The generic 3D path's fast post-processing gives what MONAI and scipy give, on small inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from inference.bundle import Bundle
from inference.tasks.segmentation import (
    QUIET_PROBABILITY,
    _fast_invert,
    _fast_invert_split,
    channel_argmax,
    components,
    label_mask,
    present_labels,
    rounded_labels,
    separable_resample,
    volume_to_metatensor,
)

OBLIQUE_AXES = (
    (0.0, np.sin(0.3), -np.cos(0.3)),
    (0.0, np.cos(0.3), np.sin(0.3)),
    (1.0, 0.0, 0.0),
)  # orthogonal


@pytest.mark.parametrize("channels", [2, 3, 5], ids=["2-channels", "3-channels", "5-channels"])
def test_channel_argmax_equals_torch_argmax_with_ties(channels):
    scores = torch.from_numpy(np.random.default_rng(channels).integers(0, 3, size=(channels, 6, 7, 8)))
    labels = channel_argmax(scores.float())
    assert labels.dtype == torch.uint8
    assert torch.equal(labels.long(), scores.float().argmax(dim=0))


@pytest.mark.parametrize("padding", ["border", "zeros"])
@pytest.mark.parametrize(
    "axes,spacing,shape",
    [
        (((0, 0, -1), (0, 1, 0), (1, 0, 0)), (2.5, 0.9, 0.8), (17, 30, 29)),
        (OBLIQUE_AXES, (1.0, 1.1, 0.6), (19, 33, 35)),
        (((0, 0, 1), (0, 1, 0), (1, 0, 0)), (3.0, 2.0, 2.2), (9, 16, 14)),
    ],
    ids=["feet-first-upsampled", "oblique", "axial-downsampled"],
)
def test_fast_invert_matches_monai_invertd(kit, padding, axes, spacing, shape):
    inference = kit.inference()
    spacingd = next(t for t in inference["preprocessing"]["transforms"] if t["_target_"] == "Spacingd")
    spacingd["padding_mode"] = padding
    bundle = Bundle(kit.bundle(inference=inference))
    volume = kit.make_volume(np.random.default_rng(0).normal(size=shape), spacing=spacing, axes=axes)
    image = bundle.get("preprocessing")({"image": volume_to_metatensor(volume)})["image"]
    softmax, invertd = bundle.get("postprocessing").transforms[:2]
    pred = MetaTensor(torch.randn(2, *image.shape[1:]), meta=dict(image.meta))
    data = softmax({"image": image, "pred": pred})

    fast = _fast_invert(invertd, dict(data), volume)
    expected = torch.as_tensor(invertd(dict(data))["pred"]).float()

    assert fast is not None and fast.shape == expected.shape == (2, *shape)
    torch.testing.assert_close(fast, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "channels,softmax", [(2, True), (3, True), (2, False)], ids=["2-softmax", "3-softmax", "2-logits"]
)
@pytest.mark.parametrize(
    "axes,spacing,shape",
    [
        (((0, 0, -1), (0, 1, 0), (1, 0, 0)), (2.5, 0.9, 0.8), (17, 37, 29)),
        (OBLIQUE_AXES, (1.0, 1.1, 0.6), (19, 33, 35)),
    ],
    ids=["feet-first", "oblique"],
)
def test_fast_invert_split_keeps_foreground_channels_and_labels_of_the_full_inverse(
    kit, channels, softmax, axes, spacing, shape
):
    """The slab-wise layout (labels + channels 1..) is bitwise what inverting every channel gives, and within
    float32 rounding of MONAI's Invertd; raw logits (not probabilities) keep no probabilities."""
    bundle = Bundle(kit.bundle())
    volume = kit.make_volume(np.random.default_rng(1).normal(size=shape), spacing=spacing, axes=axes)
    image = bundle.get("preprocessing")({"image": volume_to_metatensor(volume)})["image"]
    activation, invertd = bundle.get("postprocessing").transforms[:2]
    pred = MetaTensor(
        torch.randn(channels, *image.shape[1:], generator=torch.Generator().manual_seed(2)),
        meta=dict(image.meta),
    )
    data = activation({"image": image, "pred": pred}) if softmax else {"image": image, "pred": pred}

    split = _fast_invert_split(invertd, dict(data), volume)
    full = _fast_invert(invertd, dict(data), volume)
    expected = torch.as_tensor(invertd(dict(data))["pred"]).float()

    assert split is not None and split.labels.shape == shape and split.labels.dtype == np.uint8
    np.testing.assert_array_equal(split.labels, channel_argmax(full).numpy())
    if not softmax:
        assert split.probabilities is None and split.probability(1) is None
        return
    assert split.probabilities.shape == (channels - 1, *shape)
    np.testing.assert_array_equal(split.probabilities, full[1:].numpy())
    np.testing.assert_allclose(split.probabilities, expected[1:].numpy(), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(split.probability(channels - 1), split.probabilities[-1])


@pytest.mark.parametrize("channels", [2, 3], ids=["2-softmax", "3-softmax"])
def test_inverse_of_a_localised_prediction_leaves_quiet_slabs_at_zero_and_the_rest_as_monai(kit, channels):
    """A prediction that is background except one blob: slabs read only from model-grid rows at most
    QUIET_PROBABILITY are 0 (not computed), labels are exactly MONAI's everywhere, probabilities elsewhere as
    MONAI's to float32 rounding."""
    shape = (40, 48, 44)
    bundle = Bundle(kit.bundle())
    volume = kit.make_volume(np.zeros(shape), spacing=(2.5, 0.9, 0.8))
    image = bundle.get("preprocessing")({"image": volume_to_metatensor(volume)})["image"]
    activation, invertd = bundle.get("postprocessing").transforms[:2]
    logits = torch.full((channels, *image.shape[1:]), -12.0)
    logits[0] = 12.0
    x, y, z = (n // 2 for n in image.shape[1:])
    logits[channels - 1, x - 3 : x + 3, y - 4 : y + 2, z - 2 : z + 3] = 30.0
    data = activation({"image": image, "pred": MetaTensor(logits, meta=dict(image.meta))})

    split = _fast_invert_split(invertd, dict(data), volume)
    one_channel = {"image": image, "pred": MetaTensor(data["pred"].as_tensor()[1:], meta=dict(image.meta))}
    fast = _fast_invert(invertd, one_channel, volume)
    expected = torch.as_tensor(invertd(dict(data))["pred"]).float().numpy()

    np.testing.assert_array_equal(split.labels, expected.argmax(axis=0))
    assert 0 < (split.labels == channels - 1).sum() < split.labels.size // 50
    for probabilities in (split.probabilities, fast.numpy()):
        np.testing.assert_allclose(probabilities, expected[1:], atol=QUIET_PROBABILITY, rtol=0)
        left_at_zero = (probabilities == 0) & (expected[1:] > 0)
        assert left_at_zero.mean() > 0.5  # most of the grid was never computed
        np.testing.assert_allclose(probabilities[~left_at_zero], expected[1:][~left_at_zero], atol=1e-6, rtol=0)


def test_inverse_of_logits_computes_every_slab(kit):
    """Negative values (logits) are never left at 0: the inverse is MONAI's everywhere."""
    shape = (20, 24, 22)
    bundle = Bundle(kit.bundle())
    volume = kit.make_volume(np.zeros(shape), spacing=(2.5, 0.9, 0.8))
    image = bundle.get("preprocessing")({"image": volume_to_metatensor(volume)})["image"]
    invertd = bundle.get("postprocessing").transforms[1]
    logits = torch.full((1, *image.shape[1:]), -1e-4)
    data = {"image": image, "pred": MetaTensor(logits, meta=dict(image.meta))}
    fast = _fast_invert(invertd, dict(data), volume)
    expected = torch.as_tensor(invertd(dict(data))["pred"]).float()
    torch.testing.assert_close(fast, expected, atol=1e-9, rtol=0)
    assert bool((fast < 0).all())


def test_fast_invert_declines_transforms_it_does_not_model(kit):
    inference = kit.inference()
    inference["preprocessing"]["transforms"].insert(
        3, {"_target_": "SpatialPadd", "keys": "image", "spatial_size": [64, 64, 64]}
    )
    bundle = Bundle(kit.bundle(inference=inference))
    volume = kit.make_volume(np.zeros((8, 12, 10)))
    image = bundle.get("preprocessing")({"image": volume_to_metatensor(volume)})["image"]
    pred = MetaTensor(torch.rand(2, *image.shape[1:]), meta=dict(image.meta))
    invertd = bundle.get("postprocessing").transforms[1]
    assert _fast_invert(invertd, {"image": image, "pred": pred}, volume) is None


def test_components_match_scipy_per_label_statistics(kit):
    rng = np.random.default_rng(3)
    mask = np.zeros((24, 30, 28), dtype=bool)
    mask[4:20, 6:26, 5:23] = rng.random((16, 20, 18)) > 0.9
    volume = kit.make_volume(rng.normal(size=mask.shape), spacing=(2.0, 1.0, 0.5))
    probability = rng.random(mask.shape)
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    index = np.arange(1, count + 1)
    by_start = {c.bbox_kji[0] + c.bbox_kji[1]: c for c in components(mask, volume, probability=probability)}

    assert len(by_start) == count > 20
    for n, box in zip(index, ndimage.find_objects(labelled)):
        found = by_start[tuple(s.start for s in box) + tuple(s.stop for s in box)]
        assert found.voxels == int((labelled == n).sum())
        np.testing.assert_allclose(found.centroid_kji, ndimage.center_of_mass(mask, labelled, n), rtol=1e-12)
        assert found.mean_intensity == pytest.approx(ndimage.mean(volume.array, labelled, n), rel=1e-6)
        assert found.mean_probability == pytest.approx(ndimage.mean(probability, labelled, n), rel=1e-9)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64], ids=["uint8", "int32", "int64"])
def test_present_labels_equals_numpy_unique(dtype):
    labels = np.random.default_rng(1).choice([0, 2, 7], size=(5, 6, 7)).astype(dtype)
    np.testing.assert_array_equal(present_labels(labels), np.unique(labels))


def test_present_labels_of_negative_values_equals_numpy_unique():
    labels = np.array([[[-2, 0], [3, -2]]], dtype=np.int32)
    np.testing.assert_array_equal(present_labels(labels), [-2, 0, 3])


@pytest.mark.parametrize("values", [(0, 1), (1,), (0, 2), (0, 1, 2)], ids=["0-1", "1", "0-2", "0-1-2"])
def test_label_mask_equals_comparison_and_views_binary_uint8_labels(values):
    labels = np.random.default_rng(4).choice(values, size=(5, 6, 7)).astype(np.uint8)
    present = present_labels(labels)
    for value in (1, 2):
        mask = label_mask(labels, value, present)
        assert mask.dtype == np.bool_
        np.testing.assert_array_equal(mask, labels == value)
        assert np.shares_memory(mask, labels) == (value == 1 and set(values) <= {0, 1})


@pytest.mark.parametrize(
    "values,dtype",
    [
        (np.random.default_rng(1).random((9, 5, 6)), torch.uint8),  # a probability: 0 or 1
        (np.random.default_rng(2).integers(0, 7, (9, 5, 6)).astype(float), torch.uint8),  # a small label map
        (np.random.default_rng(3).normal(0, 400, (9, 5, 6)), torch.int32),  # out of uint8's range
    ],
    ids=["probability", "label-map", "wide"],
)
def test_rounded_labels_equal_round_of_the_whole_volume(values, dtype):
    tensor = torch.from_numpy(values.astype(np.float32))
    labels = rounded_labels(tensor)
    assert labels.dtype == dtype
    assert torch.equal(labels.long(), torch.round(tensor).long())


@pytest.mark.parametrize("threads", [1, 3])
def test_slabs_on_several_threads_equal_one_thread_bitwise(threads):
    """The slab loop spread over torch's thread count writes exactly what one thread writes, quiet slabs
    included; a slab's exception reaches the caller."""
    generator = torch.Generator().manual_seed(3)
    tensor = torch.rand((2, 30, 26, 22), generator=generator)
    tensor[:, :, :10] = 0.0  # quiet rows along the sliced axis
    index_map = np.array([[0.0, 0.7, 0.0, 0.3], [0.0, 0.0, -0.6, 25.0], [1.3, 0.0, 0.0, -0.4], [0, 0, 0, 1.0]])
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected = separable_resample(tensor, index_map, (17, 40, 36), padding="border", quiet=True)
        torch.set_num_threads(threads)
        got = separable_resample(tensor, index_map, (17, 40, 36), padding="border", quiet=True)
        with pytest.raises(RuntimeError):
            separable_resample(tensor[:, :, :, :0], index_map, (17, 40, 36), padding="border")
    finally:
        torch.set_num_threads(previous)
    assert (expected == 0).any() and (expected > 0).any()
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_slab_threads_follow_torch_up_to_the_cap_and_stay_at_one_off_the_cpu(monkeypatch):
    from inference.tasks import segmentation

    asked = []
    monkeypatch.setattr(
        segmentation, "parallel_map", lambda fn, items, workers: asked.append(workers) or [fn(i) for i in items]
    )
    tensor = torch.rand((1, 6, 6, 6))
    index_map = np.diag([1.0, 1.0, 1.0, 1.0])
    previous = torch.get_num_threads()
    try:
        for threads in (1, 3, 16):
            torch.set_num_threads(threads)
            separable_resample(tensor, index_map, (6, 6, 6), padding="zeros")
    finally:
        torch.set_num_threads(previous)
    assert asked == [1, 3, segmentation.MAX_SLAB_THREADS]
