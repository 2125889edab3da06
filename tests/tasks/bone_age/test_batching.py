"""Many radiographs at once share batches on the device queue, and each job still gets its own bone age."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from dicom_io.limits import Limits
from inference.batching import BatchingConfig
from inference.pipeline import analyze
from tests.tasks.bone_age.conftest import write_phantom


def test_concurrent_radiographs_are_batched_and_keep_their_own_results(engine, tmp_path):
    bundle = engine.registry.get("bone_age")
    assert engine.queue is not None and engine.queue.has("bone_age"), "radinfer.json asks for batching"
    paths = [write_phantom(tmp_path / f"h{k}.dcm", seed=9_400_000 + k, sex="MF"[k % 2],
                           bone_age_months=40.0 + 25 * k)[0] for k in range(6)]

    def run(k: int) -> float:
        report = analyze([paths[k]], engine, limits=Limits(), workdir=tmp_path / f"job{k}")
        return report.summary["bone_age_months"]

    alone = [run(k) for k in range(6)]
    inner = bundle.runner.inner
    sizes: list[int] = []

    def recording(batch):
        sizes.append(len(batch))
        return inner(batch)

    # A long wait makes the batch boundaries deterministic enough to see several requests share one batch.
    engine.queue.register("bone_age", recording, BatchingConfig(max_batch=8, max_wait_ms=2000))
    try:
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(run, range(6)))
    finally:
        engine.queue.register("bone_age", inner, BatchingConfig.from_radinfer(bundle.radinfer))
    assert max(sizes) > 1, sizes
    assert together == pytest.approx(alone, abs=0.05)
