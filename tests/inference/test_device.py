"""Device selection: auto, explicit choices, and clear errors."""

from __future__ import annotations

import pytest
import torch

from inference.device import select_device, select_devices


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("spec", ["auto", None, " AUTO "], ids=["auto", "none", "auto-padded-upper"])
def test_select_device_auto_without_cuda_is_cpu(no_gpu, spec):
    assert select_device(spec) == torch.device("cpu")


def test_select_device_auto_with_cuda_is_cuda(two_gpus):
    assert select_device("auto") == torch.device("cuda")


@pytest.mark.parametrize(("spec", "expected"), [("cpu", "cpu"), ("cuda", "cuda:0"), ("cuda:1", "cuda:1")])
def test_select_device_explicit_choice(two_gpus, spec, expected):
    assert select_device(spec) == torch.device(expected)


def test_select_device_accepts_torch_device(no_gpu):
    assert select_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    ("spec", "message"),
    [("tpu", "Unknown device 'tpu'"), ("cuda:x", "Unknown device"), ("cuda:2", "only 2 CUDA device")],
    ids=["unknown-name", "bad-index", "index-out-of-range"],
)
def test_select_device_invalid_is_value_error(two_gpus, spec, message):
    with pytest.raises(ValueError, match=message):
        select_device(spec)


def test_select_device_cuda_requested_without_cuda_is_value_error(no_gpu):
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_select_device_auto_on_a_gpu_machine_is_cuda():
    assert select_device("auto").type == "cuda"


def test_select_devices_auto_is_every_gpu_or_the_cpu(two_gpus):
    assert select_devices("auto") == [torch.device("cuda", 0), torch.device("cuda", 1)]


def test_select_devices_auto_without_cuda_is_the_cpu(no_gpu):
    assert select_devices(None) == [torch.device("cpu")]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("cpu", ["cpu"]), ("cuda", ["cuda:0"]), ("cuda:1", ["cuda:1"]), ("cuda:1, cuda:0", ["cuda:1", "cuda:0"])],
)
def test_select_devices_explicit_lists(two_gpus, spec, expected):
    assert select_devices(spec) == [torch.device(e) for e in expected]


@pytest.mark.parametrize(
    ("spec", "message"),
    [("cuda:0,cuda", "names a device twice"), ("cpu,cuda:1", "mixes the CPU"), ("cuda:0,cuda:2", "only 2 CUDA")],
)
def test_select_devices_rejects_repeats_mixes_and_missing_gpus(two_gpus, spec, message):
    with pytest.raises(ValueError, match=message):
        select_devices(spec)
