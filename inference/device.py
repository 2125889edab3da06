"""Pick the torch device models run on: ``auto`` (CUDA when available, else CPU) or an explicit choice."""

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
