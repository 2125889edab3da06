"""Spreading independent CPU work that releases the GIL (torch, numpy, scipy.ndimage) over threads."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int | None = None) -> list[R]:
    """``[fn(item) for item in items]``, on up to ``workers`` threads (default ``torch.get_num_threads()``, the
    process's one thread setting), in order. Every call finishes before the first exception is raised."""
    items = list(items)
    workers = min(len(items), workers or torch.get_num_threads())
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="radinfer-cpu") as pool:
        futures = [pool.submit(fn, item) for item in items]
    return [future.result() for future in futures]
