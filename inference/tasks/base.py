"""The contract between the engine and a clinical task.

A task turns one routed study into findings and artifacts for one bundle. The engine owns model loading,
series selection and the report envelope (model info, timings, disclaimer); a task owns the domain logic:
how the bundle's network is applied to the selected series and how outputs become findings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from dicom_io.limits import Limits
from dicom_io.types import Series, Study
from dicom_io.writers.sc import save_png
from inference.findings import Finding, ReportStatus
from inference.heap import release_free_memory

if TYPE_CHECKING:
    import numpy as np
    import torch
    from pydicom.dataset import Dataset

    from inference.bundle import Bundle


@dataclass
class Artifact:
    """A file a task wrote into ``TaskContext.workdir``."""

    name: str
    media_type: str
    description: str = ""
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


def save_picture(workdir: Path, stem: str, sc: Dataset, picture: np.ndarray, description: str) -> list[Artifact]:
    """Write a Secondary Capture as ``<stem>.dcm`` and its RGB ``picture`` as ``<stem>.png``; their artifacts."""
    sc.save_as(workdir / f"{stem}.dcm", enforce_file_format=True)
    save_png(picture, workdir / f"{stem}.png")
    return [
        Artifact(f"{stem}.dcm", "application/dicom", f"Secondary Capture: {description}",
                 str(sc.SOPClassUID), str(sc.SOPInstanceUID)),
        Artifact(f"{stem}.png", "image/png", f"{description} (PNG)"),
    ]


class Cancelled(Exception):
    """Raised from ``TaskContext.progress`` when the job was cancelled; tasks let it propagate."""


@dataclass
class TaskContext:
    device: torch.device
    workdir: Path
    limits: Limits = field(default_factory=Limits)
    progress: Callable[[str, float | None], None] = lambda stage, fraction: None
    timings_s: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, fraction_done_after: float | None = None) -> Iterator[None]:
        """Time a stage (accumulated into ``timings_s``) and report progress when it starts and ends; the heap
        memory the stage freed goes back to the OS (``release_free_memory``)."""
        self.progress(name, None)
        start = time.perf_counter()
        try:
            yield
        finally:
            release_free_memory()
            self.timings_s[name] = self.timings_s.get(name, 0.0) + time.perf_counter() - start
        if fraction_done_after is not None:
            self.progress(name, fraction_done_after)


@dataclass
class TaskResult:
    status: ReportStatus
    series_used: list[Series]
    findings: list[Finding] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    summary: dict[str, str | float | int | bool | None] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)


class Task(Protocol):
    """One clinical task. Implementations are registered by name in ``inference.tasks.TASKS``."""

    name: ClassVar[str]

    def run(self, bundle: Bundle, study: Study, series: list[Series], ctx: TaskContext) -> TaskResult:
        """Run ``bundle`` on the ``series`` the registry selected from ``study``."""
        ...
