"""Out-of-memory recovery with an injected failure, and the CUDA helpers' CPU behaviour."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from inference import cuda
from inference.cuda import OomRetryRunner, amp_dtype, sw_batch_size_for, to_device, use_channels_last
from inference.engine import Engine
from inference.errors import DeviceOutOfMemoryError, RetryableInferenceError
from inference.registry import Registry
from inference.runners import FakeRunner
from inference.tasks import segmentation
from tests.conftest import StubBundle

from .conftest import write_bundle

CPU = torch.device("cpu")


class OomAbove:
    """Raises CUDA's OutOfMemoryError for batches larger than ``limit`` (constructible without a GPU)."""

    name = "oom-injector"
    device = CPU

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sizes: list[int] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(batch))
        if len(batch) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected, batch {len(batch)})")
        return batch * 3.0


def _onnxruntime_error(message: str) -> Exception:
    """An exception like onnxruntime's pybind11 RuntimeException (constructible without onnxruntime-gpu)."""
    error = type("RuntimeException", (RuntimeError,), {"__module__": "onnxruntime.capi.onnxruntime_pybind11_state"})
    return error(message)


ORT_ARENA_OOM = (
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
    "Name:'/conv' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:376 void* "
    "onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*, bool, "
    "onnxruntime::WaitNotificationFn) Failed to allocate memory for requested buffer of size 939524096"
)


def test_onnxruntime_cuda_oom_is_retried_in_halves_and_other_errors_are_not():
    sizes = []

    def ort_like(batch: torch.Tensor) -> torch.Tensor:
        sizes.append(len(batch))
        if len(batch) > 2:
            raise _onnxruntime_error(ORT_ARENA_OOM)
        return batch + 1.0

    runner = OomRetryRunner(FakeRunner(ort_like))
    x = torch.zeros(8, 1, 2, 2)
    torch.testing.assert_close(runner(x), x + 1.0)
    assert sizes == [8, 4, 2, 2, 2, 2]

    def invalid(batch: torch.Tensor) -> torch.Tensor:
        raise _onnxruntime_error("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input")

    def host_oom(batch: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("host out of memory")  # the same words, not from onnxruntime

    for failing, message in ((invalid, "INVALID_ARGUMENT"), (host_oom, "host out of memory")):
        inner = FakeRunner(failing)
        with pytest.raises(RuntimeError, match=message):
            OomRetryRunner(inner)(x)
        assert inner.calls == 1  # raised as it came, no retry


def test_oom_retries_in_halves_and_keeps_the_size_that_fit():
    inner = OomAbove(limit=2)
    runner = OomRetryRunner(inner)
    x = torch.randn(8, 1, 4, 4)
    torch.testing.assert_close(runner(x), x * 3.0)
    assert inner.sizes == [8, 4, 2, 2, 2, 2]
    inner.sizes.clear()
    torch.testing.assert_close(runner(x[:5]), x[:5] * 3.0)
    assert inner.sizes == [2, 2, 1]


def test_oom_even_for_one_patch_is_retryable_and_the_next_call_succeeds():
    inner = OomAbove(limit=0)
    runner = OomRetryRunner(inner)
    with pytest.raises(RetryableInferenceError, match="ran out of device memory even for one patch"):
        runner(torch.ones(4, 1, 4, 4))
    assert inner.sizes == [4, 2, 1]
    inner.limit = 1  # memory was freed elsewhere
    torch.testing.assert_close(runner(torch.ones(4, 1, 4, 4)), torch.full((4, 1, 4, 4), 3.0))


def test_sliding_window_through_oom_retry_matches_reference():
    image = torch.randn(1, 1, 24, 20, 20)
    inferer = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=8, overlap=0.25)
    inner = OomAbove(limit=3)
    torch.testing.assert_close(inferer(image, OomRetryRunner(inner)), image * 3.0, atol=1e-5, rtol=1e-5)
    assert inner.sizes[:2] == [8, 4] and max(inner.sizes[2:]) <= 2


def test_engine_turns_oom_into_retryable_error_and_serves_the_next_job(models_dir, tmp_path, monkeypatch):
    """The whole service path: a task whose runner exhausts memory fails retryably; the next run works."""
    from dicom_io.types import Study
    from inference.tasks.base import TaskContext
    from inference.tasks.segmentation import SegmentationTask, segment_volume

    from ..inference.conftest import sphere_volume

    volume, _ = sphere_volume()
    monkeypatch.setattr(
        SegmentationTask, "run", lambda self, b, s, series, ctx: segment_volume(b, volume, ctx)
    )
    write_bundle(models_dir)
    engine = Engine(Registry([models_dir]), "cpu")
    bundle = engine.registry.get("tiny")
    engine.ensure_loaded(bundle)
    inner = OomAbove(limit=0)
    bundle.runner = OomRetryRunner(FakeRunner(lambda x: inner(x)[:, :1].repeat(1, 2, 1, 1, 1)))
    study = Study(volume.series.study_instance_uid, [volume.series])
    for name in "ab":
        (tmp_path / name).mkdir()
    with pytest.raises(RetryableInferenceError):
        engine.run(study, bundle, [volume.series], TaskContext(device=CPU, workdir=tmp_path / "a"))
    inner.limit = 64
    report = engine.run(study, bundle, [volume.series], TaskContext(device=CPU, workdir=tmp_path / "b"))
    assert report.status.value == "complete"


@pytest.mark.parametrize("setting", [True, "fp16", "bf16", False, None], ids=str)
def test_amp_is_off_on_cpu(setting):
    assert amp_dtype(setting, CPU) is None


def test_amp_rejects_unknown_setting_on_cuda():
    with pytest.raises(ValueError, match="'amp' must be"):
        amp_dtype("int8", torch.device("cuda"))


def test_cpu_keeps_configured_sw_batch_channels_first_and_pageable_copies():
    net = torch.nn.Conv3d(1, 1, 3)
    assert sw_batch_size_for(FakeRunner(lambda x: x), (1, 8, 8, 8), CPU, configured=4) == 4
    assert not use_channels_last("auto", CPU, net, amp=True)
    x = torch.ones(2, 2)
    assert to_device(x, CPU) is x


def test_cuda_settings_resolve_without_touching_a_gpu():
    cuda = torch.device("cuda")
    conv, linear = torch.nn.Conv2d(1, 1, 3), torch.nn.Linear(2, 2)
    assert amp_dtype(True, cuda) is torch.float16 and amp_dtype("fp16", cuda) is torch.float16
    assert amp_dtype(False, cuda) is None
    assert use_channels_last("auto", cuda, conv, amp=True)
    assert not use_channels_last("auto", cuda, conv, amp=False)
    assert not use_channels_last(True, cuda, linear, amp=True)
    with pytest.raises(ValueError, match="'channels_last' must be"):
        use_channels_last("sometimes", cuda, conv, amp=True)


def test_oom_wrapper_passes_a_detection_networks_dict_output_through():
    heads = {"classification": [torch.ones(1, 1, 2, 2)], "box_regression": [torch.zeros(1, 6, 2, 2)]}

    class Heads(OomAbove):
        def __call__(self, batch: torch.Tensor) -> dict:
            super().__call__(batch)
            return heads

    runner = OomRetryRunner(Heads(limit=1))
    assert runner(torch.zeros(1, 1, 4, 4)) is heads


def test_resident_device_keeps_the_job_on_the_gpu_only_when_it_fits(monkeypatch):
    gpu = torch.device("cuda", 1)
    monkeypatch.setattr(cuda, "free_memory_bytes", lambda device: 10_000 if device.type == "cuda" else None)
    assert cuda.resident_device(gpu, 3_000) == gpu  # 30% of the free memory: RESIDENT_SHARE
    assert cuda.resident_device(gpu, 3_001) == CPU
    assert cuda.resident_device(CPU, 1) == CPU


def test_model_output_out_of_memory_on_the_gpu_runs_again_with_the_volume_on_the_cpu(monkeypatch, caplog):
    """An OOM while the volume is on the GPU (the aggregation buffers, or a runner out of memory even for one
    window) gives the job a second run with the volume on the CPU instead of failing it."""
    elsewhere = torch.device("cpu", 0)  # compares unequal to the image's device: stands in for the GPU
    monkeypatch.setattr(segmentation, "resident_device", lambda device, need: elsewhere)
    released = []
    monkeypatch.setattr(segmentation, "release_cached_memory", released.append)
    image = torch.rand(1, 6, 5, 4)
    for failure in (torch.cuda.OutOfMemoryError("injected"), DeviceOutOfMemoryError("one patch")):
        calls = []

        def inferer(batch, runner, failure=failure, calls=calls):
            calls.append(batch.shape)
            if len(calls) == 1:
                raise failure
            return runner(batch)

        bundle = StubBundle(name="b", device=elsewhere, runner=lambda x: x * 2.0, output_channels=lambda: 2)
        output = segmentation.model_output(bundle, inferer, image, (6, 5, 4))
        torch.testing.assert_close(output, image * 2.0)
        assert calls == [(1, 1, 6, 5, 4)] * 2
    assert released == [elsewhere, elsewhere]
    assert "again with it on the CPU" in caplog.text


@pytest.mark.parametrize(
    "failure",
    [ValueError("bad network"), RetryableInferenceError("device queue full")],
    ids=["other-error", "queue-full-is-not-out-of-memory"],
)
def test_model_output_other_errors_on_the_gpu_are_raised(monkeypatch, failure):
    elsewhere = torch.device("cpu", 0)
    monkeypatch.setattr(segmentation, "resident_device", lambda device, need: elsewhere)
    calls = []

    def inferer(batch, runner):
        calls.append(batch.shape)
        raise failure

    bundle = StubBundle(name="b", device=elsewhere, runner=None, output_channels=lambda: 2)
    with pytest.raises(type(failure), match=str(failure)):
        segmentation.model_output(bundle, inferer, torch.rand(1, 4, 4, 4), (4, 4, 4))
    assert len(calls) == 1  # not run again on the CPU


def test_resident_bytes_counts_model_grid_and_source_grid_tensors():
    bundle = SimpleNamespace(output_channels=lambda: 3)
    image = torch.zeros(1, 10, 10, 10)
    assert segmentation.resident_bytes(bundle, image, (20, 10, 10)) == 4 * 1000 * (1 + 6 + 1) + 2000 * 13


def test_sw_batch_is_sized_from_free_memory_and_shared_by_the_jobs_on_the_device(monkeypatch):
    """The CUDA sizing with torch.cuda's memory calls stubbed: one window takes 100 MiB of PyTorch memory and
    the device has 10 GiB free; MEMORY_HEADROOM of it, shared by ``jobs``, capped at the ceiling."""
    mib, allocated = 2**20, [0]

    def one_window(batch: torch.Tensor) -> torch.Tensor:
        allocated[0] = 100 * mib  # the peak of this call
        return batch

    for name, stub in {
        "synchronize": lambda device=None: None,
        "reset_peak_memory_stats": lambda device=None: allocated.__setitem__(0, 0),
        "memory_allocated": lambda device=None: 0,
        "max_memory_allocated": lambda device=None: allocated[0],
        "memory_reserved": lambda device=None: 0,
        "mem_get_info": lambda device=None: (10 * 1024 * mib, 80 * 1024 * mib),
    }.items():
        monkeypatch.setattr(torch.cuda, name, stub)
    gpu = torch.device("cuda", 0)
    runner = FakeRunner(one_window)

    def size(**options: int) -> int:
        return sw_batch_size_for(runner, (1, 8, 8, 8), gpu, configured=4, **options)

    assert size(ceiling=1000) == 61  # floor(10240 * 0.6 / 100)
    assert size(ceiling=1000, jobs=2) == 30
    assert size() == cuda.DEFAULT_MAX_SW_BATCH
    assert size(ceiling=1000, jobs=100) == 1  # never below one window
