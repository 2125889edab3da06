"""Runners execute a loaded network on one batch; the bundle's inferer (e.g. sliding window) calls them.

A runner hides *how* the network is executed (eager PyTorch, TorchScript; ONNX Runtime later) behind
``runner(batch) -> output``. The output comes back on the batch's device, so an inferer that aggregates
windows on the CPU can drive a network on the GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from monai.data import MetaTensor


@runtime_checkable
class Runner(Protocol):
    name: str
    device: torch.device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


class TorchRunner:
    """Eager PyTorch: ``module`` (eval mode) under ``torch.inference_mode``; optional CUDA autocast (AMP)."""

    name = "torch"

    def __init__(self, module: torch.nn.Module, device: torch.device, *, amp: bool = False) -> None:
        self.module = module.to(device).eval()
        self.device = device
        self.amp = amp and device.type == "cuda"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if isinstance(batch, MetaTensor):
            batch = batch.as_tensor()
        autocast = torch.autocast(device_type="cuda") if self.amp else nullcontext()
        with torch.inference_mode(), autocast:
            out = self.module(batch.to(self.device))
        return _to_caller(out, batch.device)


class TorchScriptRunner(TorchRunner):
    """A TorchScript archive (``models/model.ts``); loading it does not unpickle Python objects."""

    name = "torchscript"

    @classmethod
    def from_file(cls, path: Path, device: torch.device, *, amp: bool = False) -> TorchScriptRunner:
        return cls(torch.jit.load(str(path), map_location=device), device, amp=amp)


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


def _to_caller(out: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move to ``device`` as an ordinary tensor: inference tensors may not be updated in place later."""
    out = out.float()
    return out.to(device) if out.device != device else out.clone()
