"""CUDA-specific execution settings: AMP, channels-last, pinned transfers, patch batch size, OOM recovery.

Everything here is a no-op on CPU, so callers need no ``if cuda`` branches. radinfer.json keys read:

- ``amp``: ``false`` (default), ``true`` / ``"fp16"``, or ``"bf16"`` (used only where the GPU supports it,
  else fp16). Only a bundle whose author checked its outputs under reduced precision should set it.
- ``channels_last``: ``"auto"`` (default: on for convolutional nets on CUDA running under AMP, where Tensor
  Cores want NHWC), ``true`` or ``false``. Measure with ``python -m benchmarks`` before forcing it.
- ``max_sw_batch_size``: ceiling for the sliding-window patch batch chosen from free GPU memory (default 32).

A 3D job keeps its model-grid tensors on the GPU when they fit in 30% of its free memory (``resident_device``):
windows are then aggregated and post-processed there and only the source-grid results come back, instead of
every window batch crossing the bus twice.

On out-of-memory, ``OomRetryRunner`` splits the patch batch in halves (and keeps the smaller size for later
calls); when even one patch does not fit it raises DeviceOutOfMemoryError (retryable) so that the job is
retried later while the service keeps serving.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING, Any

import torch

from inference.errors import DeviceOutOfMemoryError

if TYPE_CHECKING:
    from inference.runners import Runner

log = logging.getLogger(__name__)

DEFAULT_MAX_SW_BATCH = 32
# Share of the free memory a sliding window batch may use; the rest is for the aggregation buffers,
# other models on the device and allocator fragmentation.
MEMORY_HEADROOM = 0.6
RESIDENT_SHARE = 0.3
"""Share of a GPU's free memory a job's model-grid tensors may take to stay on it (``resident_device``): with
the window batch's ``MEMORY_HEADROOM`` the two stay under 90%, so residency does not make the runner split
its batches (which it would then keep doing for later jobs)."""


def amp_dtype(setting: Any, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for radinfer.json ``amp`` on ``device``; None means full float32."""
    if device.type != "cuda" or setting in (None, False, "false", "off", "fp32", ""):
        return None
    if setting in (True, "true", "fp16", "float16"):
        return torch.float16
    if setting in ("bf16", "bfloat16"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    raise ValueError(f"radinfer.json 'amp' must be false, true, 'fp16' or 'bf16', got {setting!r}.")


def use_channels_last(setting: Any, device: torch.device, module: torch.nn.Module, amp: bool) -> bool:
    """Whether to run ``module`` in channels-last memory format (see module docstring for ``"auto"``)."""
    if device.type != "cuda" or setting is False:
        return False
    has_conv = any(isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) for m in module.modules())
    if setting is True:
        return has_conv
    if setting in (None, "auto"):
        return has_conv and amp
    raise ValueError(f"radinfer.json 'channels_last' must be true, false or 'auto', got {setting!r}.")


def memory_format_for(tensor: torch.Tensor) -> torch.memory_format:
    """channels_last for 4D tensors, channels_last_3d for 5D, else contiguous."""
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(tensor.dim(), torch.contiguous_format)


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with its 4D tensors (Conv2d weights) in channels_last and 5D ones (Conv3d) in
    channels_last_3d, in place. ``module.to(memory_format=torch.channels_last)`` raises "required rank 4 tensor"
    on the first 5D weight of a 3D network."""

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        layout = memory_format_for(tensor)
        return tensor if layout is torch.contiguous_format else tensor.contiguous(memory_format=layout)

    return module._apply(convert)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a CPU tensor to a CUDA ``device`` through pinned memory (asynchronous copy); otherwise ``.to``.

    Pinning costs one host copy, which pays off for the large volumes and window batches we move; the copy
    is ordered on the current stream, so the kernels that use the result see complete data.
    """
    if device.type == "cuda" and tensor.device.type == "cpu":
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA ``device`` as the driver sees it plus what PyTorch's cache holds; None on CPU."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    reserved_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + reserved_unused)


def resident_device(device: torch.device, need_bytes: int) -> torch.device:
    """Where a job's model-grid tensors live: on ``device`` (a GPU) when ``need_bytes`` fit in
    ``RESIDENT_SHARE`` of its free memory, so that the sliding window aggregates and post-processing runs there
    as in MONAI's own evaluator; else the CPU (each window batch then goes to the GPU and back)."""
    free = free_memory_bytes(device)
    if free is None or need_bytes > free * RESIDENT_SHARE:
        return torch.device("cpu")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued kernels (a no-op on CPU): before reading a clock or handing results on."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sw_batch_size_for(
    runner: Runner,
    window_shape: tuple[int, ...],
    device: torch.device,
    *,
    configured: int,
    ceiling: int = DEFAULT_MAX_SW_BATCH,
    jobs: int = 1,
) -> int:
    """The sliding-window patch batch that fits ``device``'s free memory, measured with one window, when
    ``jobs`` jobs may run their windows on it at once (each gets an equal share).

    ``window_shape`` is (channels, *roi_size). On CPU the bundle's ``configured`` value is kept.
    """
    if device.type != "cuda":
        return configured
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    driver_free_before, _ = torch.cuda.mem_get_info(device)
    runner(torch.zeros((1, *window_shape), dtype=torch.float32))
    torch.cuda.synchronize(device)
    # PyTorch's allocator sees only its own tensors; ONNX Runtime's CUDA arena shows only as driver memory.
    driver_used = driver_free_before - torch.cuda.mem_get_info(device)[0]
    per_window = max(torch.cuda.max_memory_allocated(device) - baseline, driver_used, 1)
    free = free_memory_bytes(device) or 0
    fits = math.floor(free * MEMORY_HEADROOM / max(1, jobs) / per_window)
    chosen = max(1, min(ceiling, fits))
    log.info(
        "sw_batch_size %d (one window %.1f MiB, %.0f MiB free, %d jobs at once)",
        chosen, per_window / 2**20, free / 2**20, jobs,
    )
    return chosen


_ORT_OOM_MESSAGES = ("Failed to allocate memory", "out of memory", "cudaErrorMemoryAllocation")
_TORCH_OOM_MESSAGES = ("CUDA out of memory", "CUDA error: out of memory")


def is_oom(exc: BaseException) -> bool:
    """Device out-of-memory: PyTorch's OutOfMemoryError; the plain RuntimeError carrying its message that a
    TorchScript module raises instead (its interpreter re-raises every error as RuntimeError,
    pytorch/pytorch#148642), as does a failed cudaMalloc outside the caching allocator; or ONNX Runtime's error
    from its CUDA arena or a CUDA allocation (a generic RuntimeException / Fail, told apart by its message)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    if type(exc).__module__.startswith("onnxruntime"):
        return any(message in str(exc) for message in _ORT_OOM_MESSAGES)
    return isinstance(exc, RuntimeError) and any(message in str(exc) for message in _TORCH_OOM_MESSAGES)


class OomRetryRunner:
    """Wraps a runner: a batch that runs out of device memory is retried in halves, down to one sample.

    The largest size that worked is remembered and later batches are chunked to it, so a device that is
    short of memory is not hit with the failing size on every call. Thread-safe.
    """

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.name = inner.name
        self.device = inner.device
        self.max_chunk: int | None = None
        self._lock = threading.Lock()

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        chunk = min(len(batch), self.max_chunk or len(batch))
        while True:
            try:
                outputs = [self.inner(part) for part in torch.split(batch, chunk)]
                # one chunk passes any output through (a detection network returns a dict of head outputs)
                return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                release_cached_memory(self.device)
                if chunk == 1:
                    raise DeviceOutOfMemoryError(
                        f"The {self.name} runner ran out of device memory even for one patch of shape "
                        f"{tuple(batch.shape[1:])}; the job can be retried when the device is less busy."
                    ) from exc
                chunk = max(1, chunk // 2)
                with self._lock:
                    self.max_chunk = chunk if self.max_chunk is None else min(self.max_chunk, chunk)
                log.warning("%s runner: out of device memory, retrying with batches of %d", self.name, chunk)


def release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
