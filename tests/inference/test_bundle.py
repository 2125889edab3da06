"""Bundle loading: weight formats, hash pins, unsafe pickles, configuration errors, bundle-local scripts."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
import torch

from inference.bundle import Bundle
from inference.errors import BundleError
from inference.runners import TorchRunner, TorchScriptRunner

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("weights", "runner_type"),
    [("state_dict", TorchRunner), ("wrapped", TorchRunner), ("torchscript", TorchScriptRunner)],
    ids=["state-dict", "dict-with-model-key", "torchscript"],
)
def test_load_weights_formats_give_the_trained_network(kit, weights, runner_type):
    bundle = Bundle(kit.bundle(weights=weights))
    bundle.load(CPU)
    assert isinstance(bundle.runner, runner_type)
    assert not bundle.network.training
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = kit.tiny_unet().eval()(x)
    torch.testing.assert_close(bundle.runner(x), expected)


def test_load_records_sha256_of_weights_file(kit):
    path = kit.bundle()
    bundle = Bundle(path)
    bundle.load(CPU)
    assert bundle.weights_sha256 == hashlib.sha256((path / "models" / "model.pt").read_bytes()).hexdigest()


@pytest.mark.parametrize("pinned_by", ["radinfer-json", "caller"])
def test_load_hash_pin_mismatch_names_expected_and_actual(kit, pinned_by):
    wrong = "ab" * 32
    radinfer = kit.radinfer(weights_sha256=wrong) if pinned_by == "radinfer-json" else None
    path = kit.bundle(radinfer=radinfer)
    actual = hashlib.sha256((path / "models" / "model.pt").read_bytes()).hexdigest()
    bundle = Bundle(path, expected_sha256=wrong if pinned_by == "caller" else None)
    with pytest.raises(BundleError, match=f"sha256 {actual} but .* pins {wrong}"):
        bundle.load(CPU)
    assert bundle.runner is None


def test_load_hash_pin_match_loads(kit):
    path = kit.bundle()
    actual = hashlib.sha256((path / "models" / "model.pt").read_bytes()).hexdigest()
    bundle = Bundle(path, expected_sha256=actual.upper())
    bundle.load(CPU)
    assert bundle.loaded


def test_load_refuses_pickled_full_module(kit):
    bundle = Bundle(kit.bundle(weights="pickled"))
    with pytest.raises(BundleError, match=r"weights_only=True.*state_dict"):
        bundle.load(CPU)


def test_load_state_dict_not_matching_network_def_is_bundle_error(kit):
    wrong = {"weight": torch.zeros(2, 2)}
    bundle = Bundle(kit.bundle(weights=wrong))
    with pytest.raises(BundleError, match="does not match 'network_def'"):
        bundle.load(CPU)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("task", None, "'task' as a str"),
        ("trained_on_synthetic_data", "yes", "'trained_on_synthetic_data' as a bool"),
        ("weights_sha256", "abc", "not 64 hex digits"),
    ],
    ids=["task-missing", "synthetic-flag-not-bool", "pin-malformed"],
)
def test_bundle_invalid_radinfer_json_is_bundle_error(kit, key, value, message):
    config = kit.radinfer(**{key: value})
    if value is None:
        del config[key]
    with pytest.raises(BundleError, match=message):
        Bundle(kit.bundle(radinfer=config))


def test_bundle_without_weights_is_bundle_error(kit):
    path = kit.bundle()
    (path / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match="no weights"):
        Bundle(path)


def test_get_strips_load_and_save_transforms_and_keeps_the_rest(kit):
    bundle = Bundle(kit.bundle())
    pre = [type(t).__name__ for t in bundle.get("preprocessing").transforms]
    post = [type(t).__name__ for t in bundle.get("postprocessing").transforms]
    assert pre == ["EnsureChannelFirstd", "Orientationd", "Spacingd", "ScaleIntensityRanged", "EnsureTyped"]
    assert post == ["Activationsd", "Invertd", "AsDiscreted"]
    assert bundle.get("no_such_key", "fallback") == "fallback"


def test_load_overrides_config_device(kit):
    bundle = Bundle(kit.bundle())
    bundle.load(CPU)
    assert bundle.get("device") == CPU


def test_warmup_runs_one_batch_at_the_inferer_roi_size(kit):
    bundle = Bundle(kit.bundle())
    bundle.load(CPU)
    assert bundle.input_spatial_shape() == (32, 32, 32)
    assert bundle.input_channels() == 1
    assert bundle.warmup() > 0


def test_warmup_without_any_input_size_is_bundle_error(kit):
    inference = kit.inference(inferer={"_target_": "SimpleInferer"})
    metadata = json.loads(json.dumps(kit.metadata))
    del metadata["network_data_format"]["inputs"]["image"]["spatial_shape"]
    bundle = Bundle(kit.bundle(inference=inference, metadata=metadata))
    bundle.load(CPU)
    with pytest.raises(BundleError, match="input size"):
        bundle.warmup()


def test_output_channels_from_metadata_then_network_def_then_two(kit):
    metadata = json.loads(json.dumps(kit.metadata))
    metadata["network_data_format"]["outputs"]["pred"]["num_channels"] = 3
    assert Bundle(kit.bundle("declared", metadata=metadata)).output_channels() == 3
    del metadata["network_data_format"]["outputs"]["pred"]["num_channels"]
    network = kit.inference()["network_def"] | {"out_channels": 5}
    inference = kit.inference(network_def=network)
    assert Bundle(kit.bundle("from-net", metadata=metadata, inference=inference)).output_channels() == 5
    inference = kit.inference(network_def={k: v for k, v in network.items() if k != "out_channels"})
    assert Bundle(kit.bundle("neither", metadata=metadata, inference=inference)).output_channels() == 2


NET_A = """
import torch
KIND = "a"
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)
    def forward(self, x):
        return self.conv(x)
"""
NET_B = """
import torch
from scripts.helpers import OUT
KIND = "b"
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, OUT, 3, padding=1)
    def forward(self, x):
        return self.conv(x)
"""


def _prefixed(conv: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"conv.{key}": value for key, value in conv.state_dict().items()}


def test_scripts_packages_of_two_bundles_are_isolated(kit):
    inference = kit.inference(network_def={"_target_": "scripts.net.Net"})
    torch.manual_seed(0)
    a_path = kit.bundle(
        "a", inference=inference, scripts={"net": NET_A}, weights=_prefixed(torch.nn.Conv3d(1, 2, 1))
    )
    b_path = kit.bundle(
        "b",
        inference=inference,
        scripts={"net": NET_B, "helpers": "OUT = 3\n"},
        weights=_prefixed(torch.nn.Conv3d(1, 3, 3, padding=1)),
    )
    a, b = Bundle(a_path), Bundle(b_path)
    a.load(CPU)
    b.load(CPU)
    assert type(a.network).forward.__globals__["KIND"] == "a"
    assert type(b.network).forward.__globals__["KIND"] == "b"
    assert not any(m == "scripts" or m.startswith("scripts.") for m in sys.modules)
    assert str(a_path.resolve()) not in sys.path and str(b_path.resolve()) not in sys.path
    x = torch.zeros(1, 1, 4, 4, 4)
    assert a.runner(x).shape[1] == 2 and b.runner(x).shape[1] == 3
