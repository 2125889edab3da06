"""The four views of one study are one device-queue request; concurrent studies share batches and keep their
own results."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from dicom_io.limits import Limits
from inference.batching import BatchingConfig
from inference.pipeline import analyze

from .conftest import write_mammo_study


def test_one_study_is_one_request_and_concurrent_studies_share_batches(flag_none_engine, tmp_path):
    engine = flag_none_engine
    bundle = engine.registry.get("mammo_test")
    assert engine.queue is not None and engine.queue.has("mammo_test"), "radinfer.json asks for batching"
    studies = [write_mammo_study(tmp_path / f"s{k}", seed=20 + k, density=k % 4) for k in range(2)]

    def run(k: int) -> list[float]:
        report = analyze(studies[k], engine, limits=Limits(), workdir=tmp_path / f"job{k}")
        return [f.confidence for f in report.findings if f.label == "mammogram_view"]

    inner = bundle.runner.inner
    sizes: list[int] = []

    def recording(batch):
        sizes.append(len(batch))
        return inner(batch)

    engine.queue.register("mammo_test", recording, BatchingConfig.from_radinfer(bundle.radinfer))
    try:
        alone = [run(k) for k in range(2)]
        assert sizes == [4, 4], sizes  # each study: its four views in one request, one batch
        sizes.clear()
        # A long wait makes the batch boundaries deterministic: the second study's views fill the batch.
        engine.queue.register("mammo_test", recording, BatchingConfig(max_batch=8, max_wait_ms=2000))
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(run, range(2)))
    finally:
        engine.queue.register("mammo_test", inner, BatchingConfig.from_radinfer(bundle.radinfer))
    assert sizes == [8], sizes  # max_batch 8: both studies' four views in one batch
    for mine, reference in zip(together, alone, strict=True):
        assert mine == pytest.approx(reference, abs=1e-4)
