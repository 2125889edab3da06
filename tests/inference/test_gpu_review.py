"""GPU code paths checked on the CPU: the failures a first run on a CUDA machine would meet, with torch.cuda,
the device or the exception stubbed (no GPU is needed; the 'meta' device stands in for a second device)."""

from __future__ import annotations

import threading
import weakref
from types import SimpleNamespace

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from dicom_io.types import Study
from inference import engine as engine_module
from inference.batching import BatchingConfig, DeviceQueue
from inference.cuda import OomRetryRunner, is_oom, to_channels_last
from inference.engine import Engine
from inference.errors import DeviceOutOfMemoryError, RetryableInferenceError
from inference.registry import Registry
from inference.runners import FakeRunner, TorchRunner
from inference.tasks import segmentation
from inference.tasks.base import TaskContext
from inference.tasks.segmentation import SegmentationTask
from tests.conftest import StubBundle

CPU = torch.device("cpu")
GPU = torch.device("cuda", 0)

# What a TorchScript module raises for a CUDA OOM: its interpreter re-raises every error as a plain
# RuntimeError (pytorch/pytorch#148642), so it is not a torch.cuda.OutOfMemoryError.
TORCHSCRIPT_OOM = (
    "The following operation failed in the TorchScript interpreter.\n"
    "Traceback of TorchScript, serialized code (most recent call last):\n"
    '  File "code/__torch__/monai/networks/nets/unet.py", line 12, in forward\n'
    "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)"
)


class _StaysOnCpu(torch.nn.Sequential):
    """A network whose ``.to(cuda)`` is a no-op, so TorchRunner's CUDA set-up runs on a CPU-only build."""

    def to(self, *args, **kwargs):
        args = tuple(a for a in args if not (isinstance(a, torch.device) and a.type == "cuda"))
        return super().to(*args, **kwargs) if args or kwargs else self


# -- channels-last on a 3D network --------------------------------------------------------------------------


def test_channels_last_torch_runner_on_cuda_accepts_a_3d_network():
    """radinfer.json amp (channels_last "auto") on a 3D UNet: ``module.to(memory_format=torch.channels_last)``
    raised "required rank 4 tensor" at load; the 5D weights go channels_last_3d instead."""
    net = _StaysOnCpu(torch.nn.Conv3d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1))
    runner = TorchRunner(net, GPU, amp=torch.float16, channels_last=True)
    assert runner.channels_last and runner.amp_dtype is torch.float16
    weights = [p for p in runner.module.parameters() if p.dim() == 5]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in weights)


def test_to_channels_last_converts_each_tensor_by_its_rank():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv3d(4, 2, 3), torch.nn.Linear(3, 2))
    assert to_channels_last(net) is net
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert net[1].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert net[2].weight.is_contiguous()
    assert net[1](torch.rand(1, 4, 5, 5, 5)).shape == (1, 2, 3, 3, 3)  # still runs on a contiguous input


# -- out of memory from a TorchScript module ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RuntimeError(TORCHSCRIPT_OOM), True),
        (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"), True),
        (torch.cuda.OutOfMemoryError("CUDA out of memory."), True),
        (RuntimeError("Given groups=1, weight of size [4, 1, 3, 3, 3], expected input to have 1 channels"), False),
        (ValueError("CUDA out of memory"), False),
    ],
    ids=["torchscript", "cudamalloc", "allocator", "other-runtime-error", "not-a-runtime-error"],
)
def test_is_oom_recognises_the_runtime_errors_cuda_oom_comes_as(error, expected):
    assert is_oom(error) is expected


def test_torchscript_oom_is_retried_in_halves():
    sizes = []

    def scripted(batch: torch.Tensor) -> torch.Tensor:
        sizes.append(len(batch))
        if len(batch) > 2:
            raise RuntimeError(TORCHSCRIPT_OOM)
        return batch + 1.0

    runner = OomRetryRunner(FakeRunner(scripted))
    torch.testing.assert_close(runner(torch.zeros(8, 1)), torch.ones(8, 1))
    assert sizes[:3] == [8, 4, 2] and runner.max_chunk == 2


def test_engine_run_turns_a_torchscript_oom_into_a_retryable_error(kit, monkeypatch):
    kit.bundle("seg")
    volume, _ = kit.sphere_volume()

    def out_of_memory(self, bundle, study, series, ctx):
        raise RuntimeError(TORCHSCRIPT_OOM)

    monkeypatch.setattr(SegmentationTask, "run", out_of_memory)
    engine = Engine(Registry([kit.models]), "cpu")
    bundle = engine.registry.get("seg")
    study = Study(volume.series.study_instance_uid, [volume.series])
    with pytest.raises(RetryableInferenceError, match="retried"):
        engine.run(study, bundle, [volume.series], TaskContext(device=CPU, workdir=kit.workdir))


def test_engine_run_still_raises_other_runtime_errors(kit, monkeypatch):
    kit.bundle("seg")
    volume, _ = kit.sphere_volume()

    def broken(self, bundle, study, series, ctx):
        raise RuntimeError("Expected all tensors to be on the same device")

    monkeypatch.setattr(SegmentationTask, "run", broken)
    engine = Engine(Registry([kit.models]), "cpu")
    study = Study(volume.series.study_instance_uid, [volume.series])
    with pytest.raises(RuntimeError, match="same device"):
        engine.run(study, engine.registry.get("seg"), [volume.series], TaskContext(device=CPU, workdir=kit.workdir))


def test_model_output_torchscript_oom_on_the_gpu_runs_again_on_the_cpu(monkeypatch):
    elsewhere = torch.device("cpu", 0)  # compares unequal to the image's device: stands in for the GPU
    monkeypatch.setattr(segmentation, "resident_device", lambda device, need: elsewhere)
    monkeypatch.setattr(segmentation, "release_cached_memory", lambda device: None)
    calls = []

    def inferer(batch, runner):
        calls.append(batch.device)
        if len(calls) == 1:
            raise RuntimeError(TORCHSCRIPT_OOM)
        return runner(batch)

    bundle = StubBundle(name="b", device=elsewhere, runner=lambda x: x * 2.0, output_channels=lambda: 2)
    image = torch.rand(1, 4, 4, 4)
    torch.testing.assert_close(segmentation.model_output(bundle, inferer, image, (4, 4, 4)), image * 2.0)
    assert len(calls) == 2


def test_model_output_frees_the_failed_attempt_before_releasing_the_cache(monkeypatch):
    """torch.cuda.empty_cache() inside the except block could not return the failed attempt's buffers: the
    exception's traceback still held them."""
    elsewhere = torch.device("cpu", 0)
    monkeypatch.setattr(segmentation, "resident_device", lambda device, need: elsewhere)
    buffers: list[weakref.ref] = []
    alive_at_release = []
    monkeypatch.setattr(
        segmentation, "release_cached_memory", lambda device: alive_at_release.append(buffers[0]() is not None)
    )

    def inferer(batch, runner):
        if not buffers:
            aggregation = torch.zeros(1000)  # what MONAI's output buffer would be on the GPU
            buffers.append(weakref.ref(aggregation))
            raise torch.cuda.OutOfMemoryError("injected")
        return runner(batch)

    bundle = StubBundle(name="b", device=elsewhere, runner=lambda x: x, output_channels=lambda: 2)
    segmentation.model_output(bundle, inferer, torch.rand(1, 4, 4, 4), (4, 4, 4))
    assert alive_at_release == [False]


# -- a GPU bundle whose runner runs on the CPU (ONNX Runtime without a working CUDA provider) ---------------


def test_model_output_places_the_volume_where_the_runner_runs(monkeypatch):
    asked = []

    def resident(device, need):
        asked.append(device)
        return CPU

    monkeypatch.setattr(segmentation, "resident_device", resident)
    bundle = StubBundle(name="b", device=GPU, runner=FakeRunner(lambda x: x + 1.0), output_channels=lambda: 2)
    image = torch.rand(1, 8, 8, 8)
    inferer = SlidingWindowInferer(roi_size=(4, 4, 4), sw_batch_size=2)
    torch.testing.assert_close(segmentation.model_output(bundle, inferer, image, (8, 8, 8)), image + 1.0)
    assert asked == [CPU]


def test_sw_batch_is_sized_on_the_runners_device(kit, monkeypatch):
    sized = []
    monkeypatch.setattr(
        engine_module, "sw_batch_size_for", lambda runner, shape, device, **options: sized.append(device) or 7
    )
    engine = Engine(Registry([kit.models]), "cpu")
    engine.device = GPU  # an engine on a GPU, without touching one

    def bundle(runner):
        inferer = SlidingWindowInferer(roi_size=(4, 4, 4), sw_batch_size=3)
        return StubBundle(  # loaded by the GPU engine: the bundle's device is the engine's
            name="b", device=GPU, runner=runner, radinfer={}, get=lambda key: inferer, input_channels=lambda: 1,
            input_spatial_shape=lambda: (4, 4, 4), inferer=inferer,
        )

    on_cpu = bundle(FakeRunner(lambda x: x, device=CPU))
    engine._configure_execution(on_cpu)
    assert sized == [] and on_cpu.inferer.sw_batch_size == 3  # the bundle's own value, as on a CPU engine

    on_gpu = bundle(SimpleNamespace(name="torch", device=GPU))
    engine._configure_execution(on_gpu)
    assert sized == [GPU] and on_gpu.inferer.sw_batch_size == 7


# -- the device queue never concatenates tensors of two devices ---------------------------------------------


class _Doubler:
    name = "doubler"
    device = CPU

    def __init__(self) -> None:
        self.batches: list[tuple[int, torch.device]] = []
        self.lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.batches.append((len(batch), batch.device))
        return batch * 2.0


def test_device_queue_batches_only_requests_on_the_same_device():
    """One job's windows on the GPU (volume resident) and another's on the CPU, same model, shape and dtype:
    torch.cat of the two raised and failed both jobs."""
    queue = DeviceQueue(CPU)
    runner = _Doubler()
    queue.register("m", runner, BatchingConfig(max_batch=4, max_wait_ms=300))
    try:
        on_cpu = queue.submit_async("m", torch.ones(1, 2))
        on_other = queue.submit_async("m", torch.ones(1, 2, device="meta"))  # stands in for the GPU
        same = queue.submit_async("m", torch.ones(1, 2))
        torch.testing.assert_close(on_cpu.result(5), torch.full((1, 2), 2.0))
        assert on_other.result(5).device.type == "meta"
        torch.testing.assert_close(same.result(5), torch.full((1, 2), 2.0))
    finally:
        queue.close()
    assert sorted((n, d.type) for n, d in runner.batches) == [(1, "meta"), (2, "cpu")]


def test_device_out_of_memory_error_is_not_mistaken_for_a_torch_oom_message():
    assert not is_oom(DeviceOutOfMemoryError("The torch runner ran out of device memory even for one patch"))


# -- packaging -------------------------------------------------------------------------------------------------


def test_gpu_extra_needs_an_onnxruntime_gpu_built_for_the_cuda_of_torch_and_the_image():
    """torch 2.13's Linux wheel depends on CUDA 13 + cuDNN 9 wheels (cuda-toolkit 13.0.3, nvidia-cudnn-cu13); PyPI's
    onnxruntime-gpu is a CUDA 13 build from 1.27 on (1.19-1.26: CUDA 12, whose provider cannot load beside them).
    The cuda,cudnn extras bring the libraries, and the image's CUDA base is the same major version."""
    import re
    from pathlib import Path

    import tomllib
    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[2]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    (text,) = [r for r in pyproject["project"]["optional-dependencies"]["gpu"] if r.startswith("onnxruntime")]
    requirement = Requirement(text)
    assert requirement.extras == {"cuda", "cudnn"}
    assert not requirement.specifier.contains("1.26.0") and requirement.specifier.contains("1.27.0")
    assert re.search(r"^FROM nvidia/cuda:13\.", (root / "Dockerfile").read_text(), re.MULTILINE)
    assert re.search(r"^TORCH_VERSION\s*:?=\s*2\.13\.0$", (root / "Makefile").read_text(), re.MULTILINE), (
        "a new torch may bring another CUDA: check its wheel's requirements and move these bounds with it"
    )


class _FakeOrt:
    """onnxruntime-gpu as far as onnx_providers sees it: its providers, and preload_dlls counted."""

    def __init__(self, providers: list[str]) -> None:
        self.providers = providers
        self.preloads = 0

    def get_available_providers(self) -> list[str]:
        return self.providers

    def preload_dlls(self) -> None:
        self.preloads += 1


@pytest.mark.parametrize(
    ("providers", "device", "preloads"),
    [
        (["CUDAExecutionProvider", "CPUExecutionProvider"], GPU, 1),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], CPU, 0),  # a CPU session needs no CUDA
        (["CPUExecutionProvider"], GPU, 0),  # the CPU-only onnxruntime
    ],
)
def test_cuda_libraries_from_the_nvidia_wheels_are_loaded_before_a_gpu_session(monkeypatch, providers, device, preloads):
    import sys

    from inference import runners

    fake = _FakeOrt(providers)
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    runners._preload_cuda_libraries.cache_clear()
    try:
        chosen = runners.onnx_providers(device)
        runners.onnx_providers(device)  # once per process
    finally:
        runners._preload_cuda_libraries.cache_clear()
    assert fake.preloads == preloads
    assert chosen[-1] == "CPUExecutionProvider"


# -- runner "auto" never leaves the GPU idle behind an ONNX Runtime that fell back to the CPU ------------------


class _OnnxFellBackToCpu:
    """What OnnxRunner is when the CUDA provider is in the build but fails to load: a session on the CPU."""

    def __init__(self, model, device, **options) -> None:
        self.device = CPU


@pytest.mark.parametrize(("kind", "falls_back"), [("auto", True), ("onnx", False)])
def test_auto_runner_uses_torch_when_onnx_runtime_cannot_use_the_gpu(monkeypatch, kind, falls_back):
    from pathlib import Path

    from inference import bundle as bundle_module

    monkeypatch.setattr(bundle_module, "OnnxRunner", _OnnxFellBackToCpu)
    bundle = Registry([Path(__file__).resolve().parents[2] / "models"]).get("bone_age")
    runner = bundle._onnx_runner(Path("model.onnx"), GPU, kind, fp16=False)
    assert (runner is None) is falls_back  # "onnx" was asked for by name: kept, and its warning logged
    assert bundle._onnx_runner(Path("model.onnx"), CPU, "auto", fp16=False) is not None  # on a CPU it is the CPU


def test_tensorrt_engines_are_cached_in_a_writable_folder(monkeypatch):
    """The Docker image's models/ belong to root while the server runs as another user."""
    from pathlib import Path

    from inference import bundle as bundle_module

    bundle = Registry([Path(__file__).resolve().parents[2] / "models"]).get("bone_age")
    assert bundle._tensorrt_cache() == bundle.path / "models" / "trt_cache"
    monkeypatch.setattr(bundle_module.os, "access", lambda path, mode: False)
    elsewhere = bundle._tensorrt_cache()
    assert bundle.path not in elsewhere.parents and elsewhere.name.startswith("bone_age-")
