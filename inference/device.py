"""Pick the torch device(s) models run on: ``auto`` (CUDA when available, else CPU) or an explicit choice."""

from __future__ import annotations

import re

import torch

_CUDA_SPEC = re.compile(r"^cuda(?::(\d+))?$")


def select_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Return the device for ``spec``: ``"auto"``/``None``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises ValueError for anything else, or when CUDA (or GPU N) is requested but not present, so that a
    misconfigured server fails at start-up rather than on the first job.
    """
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA_SPEC.match(text)
    if match is None:
        raise ValueError(f"Unknown device {spec!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    if not torch.cuda.is_available():
        raise ValueError(
            f"Device {spec!r} was requested but CUDA is not available here; use 'auto' or 'cpu'."
        )
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"Device {spec!r} was requested but only {count} CUDA device(s) exist (0..{count - 1})."
        )
    return torch.device("cuda", index)


def select_devices(spec: str | None = "auto") -> list[torch.device]:
    """The devices the server keeps a replica of every model on: ``"auto"``/``None`` (every visible GPU, else the
    CPU), ``"cpu"``, or one or more comma-separated ``"cuda"`` / ``"cuda:N"``. Raises ValueError as
    ``select_device`` does, and for a device named twice."""
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return [torch.device("cuda", index) for index in range(torch.cuda.device_count())]
        return [torch.device("cpu")]
    devices = [select_device(part) for part in text.split(",")]
    devices = [torch.device("cuda", d.index or 0) if d.type == "cuda" else d for d in devices]
    if len(set(devices)) != len(devices):
        raise ValueError(f"Device list {spec!r} names a device twice.")
    if len(devices) > 1 and any(d.type == "cpu" for d in devices):
        raise ValueError(f"Device list {spec!r} mixes the CPU with GPUs; use 'cpu' alone or GPUs only.")
    return devices
