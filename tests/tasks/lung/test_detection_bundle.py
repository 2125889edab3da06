"""A box-detection bundle laid out like the MONAI model zoo's ``lung_nodule_ct_detection`` (RetinaNetDetector,
``detector_ops``, a ``scripts`` inferer, the zoo's preprocessing) runs through the lung task.

- An oracle network (its "weights" are the phantom's nodule centres on the preprocessed grid) checks the path
  from MONAI's box decoding to findings: boxes mapped back to the source grid, delineated and measured to the
  same accuracy requirements as the shipped segmentation bundle.
- MONAI's RetinaNet (its heads on a small convolutional feature extractor, random weights, sliding window) checks
  that such a network loads, warms up and runs end to end. The zoo's ResNet-FPN extractor needs torchvision,
  which has no CPU build for this torch in the package index here.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_io.limits import Limits
from inference.bundle import Bundle, write_bundle
from inference.engine import Engine
from inference.pipeline import analyze
from inference.registry import Registry
from inference.tasks.segmentation import preprocess, volume_to_metatensor
from tests.tasks.lung.accuracy import (
    assert_each_nodule_found_within_one_voxel,
    assert_nodules_measured_as_constructed,
)

INFERER_SCRIPT = '''
from monai.inferers import Inferer


class RetinaNetInferer(Inferer):
    """Runs the detector with the given network, through its sliding window when the image exceeds it."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def __call__(self, inputs, network):
        self.detector.network = network
        self.detector.training = network.training
        window = getattr(self.detector.inferer, "roi_size", None)
        larger = window is not None and any(
            s > w for image in inputs for s, w in zip(image.shape[1:], window)
        )
        return self.detector(inputs, use_inferer=larger)
'''

ORACLE_SCRIPT = '''
import torch


class OracleNet(torch.nn.Module):
    """RetinaNet-shaped heads that score one anchor location per known centre (a test double of a detector)."""

    spatial_dims, num_classes, num_anchors, size_divisible = 3, 1, 1, 1
    cls_key, box_reg_key = "classification", "box_regression"

    def __init__(self, nodules: int):
        super().__init__()
        self.register_buffer("centres", torch.zeros(nodules, 3))

    def forward(self, images):
        logits = torch.full((images.shape[0], 1, *images.shape[2:]), -20.0)
        for centre in self.centres.round().long():
            if all(0 <= c < n for c, n in zip(centre.tolist(), images.shape[2:])):  # warm-up input is smaller
                logits[:, 0, centre[0], centre[1], centre[2]] = 20.0
        return {self.cls_key: [logits], self.box_reg_key: [torch.zeros(images.shape[0], 6, *images.shape[2:])]}
'''

FEATURES_SCRIPT = '''
import torch


class SmallFeatures(torch.nn.Module):
    """One feature map at stride (4, 4, 2): stands in for the zoo's ResNet-FPN extractor, which needs
    torchvision (no CPU build of it for this torch here)."""

    out_channels = 16

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv3d(1, 8, 3, stride=(2, 2, 1), padding=1), torch.nn.ReLU(),
            torch.nn.Conv3d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        )

    def forward(self, images):
        return {"0": self.layers(images)}
'''

PREPROCESSING = {
    "_target_": "Compose",
    "transforms": [
        {"_target_": "LoadImaged", "keys": "image", "meta_key_postfix": "meta_dict"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [0.703125, 0.703125, 1.25]},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1024.0, "a_max": 300.0, "b_min": 0.0,
         "b_max": 1.0, "clip": True},
        {"_target_": "EnsureTyped", "keys": "image"},
    ],
}


def _inference(
    network_def: dict, *, patch: list[int], anchor: list[int], scales: list[int], score_thresh: float = 0.02,
    detections: int = 300,
) -> dict:
    """The zoo's inference.json layout (its detector settings unless given) around ``network_def``."""
    return {
        "imports": ["$import monai"],
        "device": "$torch.device('cpu')",
        "infer_patch_size": patch,
        "anchor_generator": {
            "_target_": "monai.apps.detection.utils.anchor_utils.AnchorGeneratorWithAnchorShape",
            "feature_map_scales": scales, "base_anchor_shapes": [anchor],
        },
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "detector": {"_target_": "RetinaNetDetector", "network": "@network",
                     "anchor_generator": "@anchor_generator", "debug": False},
        "detector_ops": [
            "$@detector.set_target_keys(box_key='box', label_key='label')",
            (f"$@detector.set_box_selector_parameters(score_thresh={score_thresh},topk_candidates_per_level=1000,"
             f"nms_thresh=0.22,detections_per_img={detections})"),
            ("$@detector.set_sliding_window_inferer(roi_size=@infer_patch_size,overlap=0.25,sw_batch_size=1,"
             "mode='constant',device='cpu')"),
        ],
        "preprocessing": copy.deepcopy(PREPROCESSING),
        "inferer": {"_target_": "scripts.detection_inferer.RetinaNetInferer", "detector": "@detector"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "ClipBoxToImaged", "box_keys": "box", "label_keys": "label", "box_ref_image_keys": "image",
             "remove_empty": True},
            {"_target_": "AffineBoxToWorldCoordinated", "box_keys": "box", "box_ref_image_keys": "image",
             "image_meta_key_postfix": "meta_dict", "affine_lps_to_ras": True},
        ]},
    }


def _write(path: Path, inference: dict, state_dict: dict, spatial_shape: list[int], scripts: dict[str, str],
           **radinfer_options: object) -> Path:
    metadata = {"version": "0.0.1", "network_data_format": {"inputs": {"image": {
        "type": "image", "num_channels": 1, "spatial_shape": spatial_shape}}}}
    radinfer = {"task": "lung_nodules", "trained_on_synthetic_data": True,
                "intended_use": "Test double of a box-detection bundle; not for clinical use.",
                "selection": {"modalities": ["CT"], "min_slices": 16, "dimensions": 3},
                "labels": {"1": {"name": "nodule"}}} | radinfer_options
    write_bundle(path, metadata=metadata, inference=inference, radinfer=radinfer, state_dict=state_dict)
    (path / "scripts").mkdir()
    (path / "scripts" / "__init__.py").write_text("")
    for name, text in scripts.items():
        (path / "scripts" / f"{name}.py").write_text(text)
    return path


def _model_grid_centres(lung_phantom, volume_of) -> torch.Tensor:
    """The phantom's nodule centres as voxel indices of the zoo preprocessing's output grid."""
    from monai.transforms import Compose, EnsureChannelFirstd, Orientationd, Spacingd

    volume = volume_of(lung_phantom)
    image = preprocess(Compose([EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
                                Spacingd("image", pixdim=(0.703125, 0.703125, 1.25))]),
                       {"image": volume_to_metatensor(volume)})["image"]
    ras_to_index = np.linalg.inv(image.affine.double().numpy())
    centres = [ras_to_index @ [-n.center_lps[0], -n.center_lps[1], n.center_lps[2], 1.0] for n in lung_phantom.nodules]
    return torch.tensor(np.array(centres)[:, :3], dtype=torch.float32)


@pytest.fixture(scope="module")
def phantom_files(write_phantom):
    return write_phantom("detection")


@pytest.fixture(scope="module")
def volume_of(phantom_files):
    from dicom_io.reader import read_headers
    from dicom_io.volume import build_volume

    return lambda _phantom: build_volume(read_headers(phantom_files, Limits()).series[0], Limits())


def _run(bundle_path: Path, phantom_files: list[Path], workdir: Path):
    engine = Engine(Registry([bundle_path.parent]), "cpu")
    engine.load_all()
    assert engine.status()[bundle_path.name].state.value == "ready", engine.status()[bundle_path.name].error
    return analyze([phantom_files[0].parent], engine, model=bundle_path.name, limits=Limits(), workdir=workdir)


def test_oracle_detector_boxes_become_nodules_measured_as_constructed(
    tmp_path, lung_phantom, nodule_specs, phantom_files, volume_of
):
    centres = _model_grid_centres(lung_phantom, volume_of)
    inference = _inference({"_target_": "scripts.oracle.OracleNet", "nodules": len(centres)},
                           patch=[512, 512, 256], anchor=[14, 14, 8], scales=[1])
    bundle = _write(tmp_path / "models" / "oracle_detection", inference, {"centres": centres}, [96, 96, 48],
                    {"detection_inferer": INFERER_SCRIPT, "oracle": ORACLE_SCRIPT})
    (tmp_path / "job").mkdir()

    report = _run(bundle, phantom_files, tmp_path / "job")

    assert_each_nodule_found_within_one_voxel(report, lung_phantom, nodule_specs)
    assert_nodules_measured_as_constructed(report, lung_phantom, nodule_specs)
    assert {round(f.confidence, 3) for f in report.findings} == {1.0}  # sigmoid(20), the oracle's score
    assert (tmp_path / "job" / "seg.dcm").is_file() and (tmp_path / "job" / "sr.dcm").is_file()


def test_real_retinanet_bundle_loads_warms_up_and_runs_through_its_sliding_window(
    tmp_path, phantom_files, volume_of, lung_phantom
):
    network_def = {
        "_target_": "RetinaNet", "spatial_dims": 3, "num_classes": 1, "num_anchors": 1,
        "feature_extractor": {"_target_": "scripts.features.SmallFeatures"}, "size_divisible": [4, 4, 2],
    }
    # Random heads score about 0.01 (RetinaNet's prior): keep every box, the 30 best after NMS.
    inference = _inference(network_def, patch=[128, 128, 48], anchor=[8, 8, 4], scales=[1], score_thresh=0.0,
                           detections=30)
    bundle = _write(tmp_path / "models" / "retinanet", inference, {}, [128, 128, 48],
                    {"detection_inferer": INFERER_SCRIPT, "features": FEATURES_SCRIPT}, min_confidence=0.0)
    torch.manual_seed(0)
    network = Bundle(bundle).get("network_def")
    torch.save(network.state_dict(), bundle / "models" / "model.pt")  # random weights
    (tmp_path / "job").mkdir()

    report = _run(bundle, phantom_files, tmp_path / "job")

    assert report.status.value == "complete"
    assert 0 < report.summary["nodules"] == len(report.findings) <= 20  # every box scores >= 0, some delineate
    assert report.model.trained_on_synthetic_data
    volume = volume_of(lung_phantom)
    for finding in report.findings:  # random weights: whatever it found, it is on the grid and delineated
        assert all(0 <= v < n for v, n in zip(finding.location.voxel_kji, volume.shape, strict=True))
        assert 0.0 <= finding.confidence <= 1.0
