"""One study end to end: unpack -> header pass -> route -> run. Used by ``radinfer infer`` and the worker."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from dicom_io.limits import Limits
from dicom_io.reader import read_headers, unpack
from inference.engine import Engine
from inference.findings import FindingsReport
from inference.tasks.base import TaskContext


def analyze(
    inputs: list[Path],
    engine: Engine,
    *,
    model: str | None = None,
    limits: Limits,
    workdir: Path,
    progress: Callable[[str, float | None], None] | None = None,
) -> FindingsReport:
    """Analyse the study in ``inputs`` (files, folders, zips) with ``model`` or the bundle routing picks.

    Artifacts are written to ``workdir`` (named in the report); unpacked archives go to a temporary folder
    inside it that is removed afterwards. Raises InputRejected, ModelNotFoundError, NoModelForStudyError,
    BundleError, RetryableInferenceError or Cancelled (from ``progress``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = TaskContext(device=engine.device, workdir=workdir, limits=limits)
    if progress is not None:
        ctx.progress = progress
    with tempfile.TemporaryDirectory(prefix="unpacked-", dir=workdir) as unpacked:
        with ctx.stage("unpack", 0.02):
            paths = unpack(inputs, Path(unpacked), limits)
        with ctx.stage("read_headers", 0.05):
            study = read_headers(paths, limits)
        with ctx.stage("route", 0.06):
            bundle, series = engine.registry.route(study, model)
        return engine.run(study, bundle, series, ctx)
