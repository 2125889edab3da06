"""Runners execute a loaded network on one batch; the bundle's inferer (e.g. sliding window) calls them.

A runner hides *how* the network is executed (eager PyTorch, TorchScript, ONNX Runtime) behind
``runner(batch) -> output``. The output comes back as float32 on the batch's device, so an inferer that
aggregates windows on the CPU can drive a network on the GPU.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from monai.data import MetaTensor

from inference.cuda import memory_format_for, to_channels_last, to_device

log = logging.getLogger(__name__)


@runtime_checkable
class Runner(Protocol):
    name: str
    device: torch.device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


class TorchRunner:
    """Eager PyTorch: ``module`` (eval mode) under ``torch.inference_mode``.

    On CUDA: optional autocast to ``amp_dtype`` (see ``inference.cuda.amp_dtype``), optional channels-last
    memory format, and inputs copied through pinned memory. ``compile_mode``: a ``torch.compile`` mode
    (``"default"``, ``"reduce-overhead"``: CUDA graphs on a GPU, ``"max-autotune"``) or None for eager; the
    first call of each input shape compiles (tens of seconds), ``module`` stays the eager network.
    """

    name = "torch"

    def __init__(
        self,
        module: torch.nn.Module,
        device: torch.device,
        *,
        amp: bool | torch.dtype | None = False,
        channels_last: bool = False,
        compile_mode: str | None = None,
    ) -> None:
        self.device = device
        self.amp_dtype = _autocast_dtype(amp) if device.type == "cuda" else None
        self.channels_last = channels_last and device.type == "cuda"
        module = module.to(device).eval()
        if self.channels_last:
            module = to_channels_last(module)  # channels_last_3d for a 3D network's 5D weights
        self.module = module
        self.compile_mode = compile_mode
        self._forward = module if compile_mode is None else torch.compile(module, mode=compile_mode)

    @property
    def amp(self) -> bool:
        return self.amp_dtype is not None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if isinstance(batch, MetaTensor):
            batch = batch.as_tensor()
        x = to_device(batch, self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=memory_format_for(x))
        autocast = (
            torch.autocast(device_type="cuda", dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        )
        with torch.inference_mode(), autocast:
            out = self._forward(x)
        return _to_caller(out, batch.device)


class TorchScriptRunner(TorchRunner):
    """A TorchScript archive (``models/model.ts``); loading it does not unpickle Python objects."""

    name = "torchscript"

    @classmethod
    def from_file(cls, path: Path, device: torch.device, **options: Any) -> TorchScriptRunner:
        return cls(torch.jit.load(str(path), map_location=device), device, **options)


class OnnxRunner:
    """ONNX Runtime: ``models/model.onnx`` on the CPU execution provider, or CUDA / TensorRT when the
    ``gpu`` extra (onnxruntime-gpu) is installed and ``device`` is a GPU.

    On CUDA the input is bound in place on the GPU (IO binding, no host round trip for the input); the
    output is copied back to the caller's device. ``threads`` sets ONNX Runtime's intra-op thread count
    (None: ``torch.get_num_threads()``, so both runtimes obey the process's one thread setting).
    """

    name = "onnx"

    def __init__(
        self,
        model: Path | bytes,
        device: torch.device,
        *,
        tensorrt: bool = False,
        fp16: bool = False,
        cache_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        providers = onnx_providers(device, tensorrt=tensorrt, fp16=fp16, cache_dir=cache_dir)
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, sess_options=options, providers=providers)
        self.providers = self.session.get_providers()
        self.device = device if self.providers[0] != "CPUExecutionProvider" else torch.device("cpu")
        if self.device != device:
            log.warning("ONNX Runtime has no GPU execution provider here; %s runs on the CPU.", device)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self._float_output = self.session.get_outputs()[0].type == "tensor(float)"
        self._output_shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
        self.run_options = ort.RunOptions()
        if self.device.type == "cpu":
            # Hand the CPU arena's free chunks back at the end of each run. Without it the arena keeps its
            # high-water mark (~250 MiB for a 16-channel 3D UNet on 4 x 96^3 windows) for the process's life,
            # i.e. through a CT job's post-processing, where its peak memory is. Costs re-touching that memory
            # on the next run (~6% of a run, measured).
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if isinstance(batch, MetaTensor):
            batch = batch.as_tensor()
        if self.device.type == "cuda":
            return self._run_bound(batch)
        x = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run([self.output_name], {self.input_name: x}, self.run_options)[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(batch.device)

    def _run_bound(self, batch: torch.Tensor) -> torch.Tensor:
        """Run with IO binding: the input read in place on the session's device and, once an input shape's
        output shape is known (from its first run), the output written straight into a tensor there, so a
        batch already on the GPU never visits the host."""
        x = to_device(batch.detach().to(torch.float32), self.device).contiguous()
        kind, index = self.device.type, self.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, kind, index, np.float32, tuple(x.shape), x.data_ptr())
        shape = self._output_shapes.get(tuple(x.shape)) if self._float_output else None
        out = None if shape is None else torch.empty(shape, dtype=torch.float32, device=x.device)
        if out is None:
            binding.bind_output(self.output_name, kind, index)
        else:
            binding.bind_output(self.output_name, kind, index, np.float32, shape, out.data_ptr())
        if kind == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # ORT uses its own stream
        self.session.run_with_iobinding(binding, self.run_options)
        if out is None:
            out = torch.from_numpy(np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32))
            self._output_shapes[tuple(x.shape)] = tuple(out.shape)
        return out.to(batch.device)


def onnx_providers(
    device: torch.device, *, tensorrt: bool = False, fp16: bool = False, cache_dir: Path | None = None
) -> list[str | tuple[str, dict[str, Any]]]:
    """Execution providers for ``device``, best first, limited to those this onnxruntime build has.

    TensorRT is opt-in (radinfer.json ``onnx_tensorrt: true``): building its engine takes minutes on first
    use, so an engine cache directory should be given.
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    chosen: list[str | tuple[str, dict[str, Any]]] = []
    if device.type == "cuda":
        device_id = device.index or 0
        if tensorrt and "TensorrtExecutionProvider" in available:
            trt: dict[str, Any] = {"device_id": device_id, "trt_fp16_enable": fp16}
            if cache_dir is not None:
                trt |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)}
            chosen.append(("TensorrtExecutionProvider", trt))
        if "CUDAExecutionProvider" in available:
            chosen.append(("CUDAExecutionProvider", {"device_id": device_id}))
        if chosen:
            _preload_cuda_libraries()
    chosen.append("CPUExecutionProvider")
    return chosen


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that onnxruntime-gpu's CUDA provider links by name.

    The gpu extra installs them as NVIDIA wheels (``onnxruntime-gpu[cuda,cudnn]``), which are not on the
    loader's path: without this the provider fails to load (``libcublasLt.so.13: cannot open shared object
    file``) and the session quietly runs on the CPU. A CUDA build of torch loads the same wheels on import;
    loading them again is harmless. ``preload_dlls`` exists from onnxruntime 1.21 on and prints, not raises,
    what it cannot find.
    """
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()


def session_providers(runner: object) -> list[str] | None:
    """The execution providers an ONNX Runtime runner's session got (after any fallback), looked up through
    wrapping runners (batching, out-of-memory retry); None for the torch runners."""
    while runner is not None:
        providers = getattr(runner, "providers", None)
        if providers is not None:
            return list(providers)
        runner = getattr(runner, "inner", None)
    return None


def onnx_runs_on(device: torch.device) -> bool:
    """True when onnxruntime is installed and can run on ``device`` (CUDA needs the ``gpu`` extra)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return device.type == "cpu" or "CUDAExecutionProvider" in ort.get_available_providers()


class FakeRunner:
    """A runner computing ``fn(batch)`` in plain PyTorch: for tests where the model is not the point."""

    name = "fake"

    def __init__(
        self, fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device | str = "cpu"
    ) -> None:
        self.fn = fn
        self.device = torch.device(device)
        self.calls = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if isinstance(batch, MetaTensor):
            batch = batch.as_tensor()
        return self.fn(batch.to(self.device)).to(batch.device)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(setting: Any) -> str | None:
    """The ``torch.compile`` mode for radinfer.json ``compile`` (default false: eager); ``true`` is
    ``"default"``. Off unless a bundle's author measured it to help (``python -m benchmarks --only runners``)."""
    if setting in (None, False, "false", "off", ""):
        return None
    if setting is True:
        return "default"
    if setting in COMPILE_MODES:
        return setting
    raise ValueError(f"radinfer.json 'compile' must be false, true or one of {', '.join(COMPILE_MODES)}; got {setting!r}.")


def _autocast_dtype(amp: bool | torch.dtype | None) -> torch.dtype | None:
    if isinstance(amp, torch.dtype):
        return amp
    return torch.float16 if amp else None


def _to_caller(out: Any, device: torch.device) -> Any:
    """Move to ``device`` as an ordinary float tensor (inference tensors may not be updated in place later); the
    same for each tensor of a dict, list or tuple output (a detection network's heads)."""
    if isinstance(out, dict):
        return {key: _to_caller(value, device) for key, value in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_to_caller(value, device) for value in out)
    out = out.float()
    return out.to(device) if out.device != device else out.clone()
