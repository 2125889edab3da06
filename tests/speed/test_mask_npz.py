"""mask.npz written at deflate level 1 reads back with np.load exactly as np.savez_compressed's would."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from inference.tasks.segmentation import write_mask_npz


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64], ids=str)
def test_mask_npz_round_trips_like_savez_compressed(dtype: type, tmp_path: Path) -> None:
    labels = np.random.default_rng(0).integers(0, 3, (5, 7, 9)).astype(dtype)
    volume = SimpleNamespace(affine=np.diag([2.0, 0.7, 0.7, 1.0]), spacing=(2.0, 0.7, 0.7))
    write_mask_npz(tmp_path / "mask.npz", labels, volume)
    np.savez_compressed(tmp_path / "reference.npz", mask=labels.astype(np.uint8), affine=volume.affine,
                        spacing=np.asarray(volume.spacing))
    with np.load(tmp_path / "mask.npz") as ours, np.load(tmp_path / "reference.npz") as reference:
        assert sorted(ours.files) == sorted(reference.files) == ["affine", "mask", "spacing"]
        for name in reference.files:
            assert ours[name].dtype == reference[name].dtype
            np.testing.assert_array_equal(ours[name], reference[name])


def test_mask_npz_rejects_labels_beyond_uint8(tmp_path: Path) -> None:
    volume = SimpleNamespace(affine=np.eye(4), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="0..255"):
        write_mask_npz(tmp_path / "mask.npz", np.array([[[0, 256]]], dtype=np.int32), volume)
