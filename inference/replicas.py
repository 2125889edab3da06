"""Model replicas on several devices: one Engine (with its own Registry, so its own loaded bundles) per device.

With several GPUs the server keeps every model on each (``RADINFER_DEVICE=auto`` or a list such as
``cuda:0,cuda:1``) and runs each job on the replica with the fewest jobs running; with one device this is one
Engine and nothing changes. Routing reads the first engine's registry: every engine holds the same bundles.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from inference.engine import BundleState, BundleStatus, Engine


class EnginePool:
    def __init__(self, engines: list[Engine]) -> None:
        if not engines:
            raise ValueError("EnginePool needs at least one engine.")
        self.engines = engines
        self._running = [0] * len(engines)
        self._lock = threading.Lock()

    @property
    def primary(self) -> Engine:
        """The first device's engine: its registry routes studies and its bundles answer model queries."""
        return self.engines[0]

    @property
    def devices(self) -> list[torch.device]:
        return [engine.device for engine in self.engines]

    @property
    def ready(self) -> bool:
        return all(engine.ready for engine in self.engines)

    def load_all(self) -> dict[str, BundleStatus]:
        """Load and warm up every bundle on every device; the merged status (see ``status``)."""
        for engine in self.engines:
            engine.load_all()
        return self.status()

    def status(self) -> dict[str, BundleStatus]:
        """Per bundle: ready when ready on every device, else the first device's state that is not, with its
        device named in the error."""
        merged = self.primary.status()
        for engine in self.engines[1:]:
            for name, status in engine.status().items():
                if status.state is not BundleState.ready and merged[name].state is BundleState.ready:
                    error = f"on {engine.device}: {status.error}" if status.error else None
                    merged[name] = BundleStatus(name, status.state, error)
        return merged

    @contextmanager
    def acquire(self) -> Iterator[Engine]:
        """The engine with the fewest jobs running (the first on ties), counted as busy inside the block."""
        with self._lock:
            index = min(range(len(self.engines)), key=lambda n: self._running[n])
            self._running[index] += 1
        try:
            yield self.engines[index]
        finally:
            with self._lock:
                self._running[index] -= 1
