"""DeviceQueue: each caller gets its own rows back, batches form, priorities, max wait, bounded queue."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from inference.batching import (
    PRIORITY_BULK,
    PRIORITY_INTERACTIVE,
    BatchedRunner,
    BatchingConfig,
    DeviceQueue,
    request_priority,
)
from inference.errors import QueueFullError, RetryableInferenceError
from inference.runners import TorchRunner

from .conftest import GatedRunner


@pytest.fixture
def queue():
    queues: list[DeviceQueue] = []

    def make(**kwargs) -> DeviceQueue:
        queues.append(DeviceQueue("cpu", **kwargs))
        return queues[-1]

    yield make
    for q in queues:
        q.close()


def _conv_runner() -> TorchRunner:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    return TorchRunner(net, torch.device("cpu"))


def _tagged(tag: float, rows: int = 1) -> torch.Tensor:
    """Input whose every value is ``tag``, so the batch a runner saw tells who was in it."""
    return torch.full((rows, 1, 4, 4), float(tag))


def test_many_threads_each_get_exactly_their_own_output(queue):
    runner = _conv_runner()
    q = queue(max_pending=1000)
    q.register("net", runner, BatchingConfig(max_batch=8, max_wait_ms=5))
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn((1 + n % 3, 1, 16, 16), generator=generator) for n in range(96)]
    with ThreadPoolExecutor(16) as pool:
        outputs = list(pool.map(lambda x: q.submit("net", x, timeout=30), inputs))
    for x, out in zip(inputs, outputs, strict=True):
        torch.testing.assert_close(out, runner(x), atol=1e-5, rtol=1e-5)
    assert sum(q.batch_sizes) == sum(len(x) for x in inputs)
    assert max(q.batch_sizes) <= 8


def test_requests_waiting_while_device_busy_run_as_one_batch(queue):
    runner = GatedRunner()
    q = queue()
    q.register("m", runner, BatchingConfig(max_batch=4, max_wait_ms=0))
    first = q.submit_async("m", _tagged(0))
    assert runner.entered.wait(5)
    waiting = [q.submit_async("m", _tagged(n)) for n in range(1, 6)]
    runner.gate.set()
    results = [f.result(10) for f in [first, *waiting]]
    assert [r.unique().item() for r in results] == [2.0 * n for n in range(6)]
    assert q.batch_sizes == [1, 4, 1]


def test_interactive_requests_are_served_before_older_bulk_ones(queue):
    runner = GatedRunner()
    q = queue()
    q.register("m", runner, BatchingConfig(max_batch=1, max_wait_ms=0))
    busy = q.submit_async("m", _tagged(0))
    assert runner.entered.wait(5)
    bulk = [q.submit_async("m", _tagged(n), priority=PRIORITY_BULK) for n in (1, 2)]
    with request_priority(PRIORITY_INTERACTIVE):
        interactive = q.submit_async("m", _tagged(3))
    runner.gate.set()
    for future in [busy, *bulk, interactive]:
        future.result(10)
    assert [b.unique().item() for b in runner.batches] == [0, 3, 1, 2]


def test_lone_request_is_served_after_max_wait_without_a_full_batch(queue):
    q = queue()
    q.register("m", GatedRunner(), BatchingConfig(max_batch=8, max_wait_ms=20))
    q._models["m"].runner.gate.set()
    assert q.submit("m", _tagged(5), timeout=10).unique().item() == 10.0
    assert q.batch_sizes == [1]


def test_different_input_shapes_are_never_batched_together(queue):
    runner = GatedRunner()
    q = queue()
    q.register("m", runner, BatchingConfig(max_batch=8, max_wait_ms=0))
    busy = q.submit_async("m", _tagged(0))
    assert runner.entered.wait(5)
    small = q.submit_async("m", torch.ones(1, 1, 4, 4))
    large = q.submit_async("m", torch.ones(1, 1, 8, 8))
    runner.gate.set()
    assert small.result(10).shape == (1, 1, 4, 4) and large.result(10).shape == (1, 1, 8, 8)
    busy.result(10)
    assert q.batch_sizes == [1, 1, 1]


def test_full_queue_raises_queue_full_error_with_retry_after(queue):
    runner = GatedRunner()
    q = queue(max_pending=2, retry_after_s=7)
    q.register("m", runner, BatchingConfig(max_batch=1, max_wait_ms=0))
    running = q.submit_async("m", _tagged(0))
    assert runner.entered.wait(5)
    waiting = [q.submit_async("m", _tagged(n)) for n in (1, 2)]
    with pytest.raises(QueueFullError, match="queue is full") as raised:
        q.submit_async("m", _tagged(3))
    assert raised.value.retry_after_s == 7
    runner.gate.set()
    assert [f.result(10).unique().item() for f in [running, *waiting]] == [0, 2, 4]


def test_runner_failure_reaches_every_caller_in_the_batch_and_queue_keeps_serving(queue):
    calls = []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("device fault")
        return batch + 1

    runner = GatedRunner(flaky)
    q = queue()
    q.register("m", runner, BatchingConfig(max_batch=4, max_wait_ms=0))
    busy = q.submit_async("m", _tagged(0))
    assert runner.entered.wait(5)
    doomed = [q.submit_async("m", _tagged(n)) for n in (1, 2)]
    runner.gate.set()
    busy.result(10)
    for future in doomed:
        with pytest.raises(RuntimeError, match="device fault"):
            future.result(10)
    assert q.submit("m", _tagged(9), timeout=10).unique().item() == 10.0


def test_batched_runner_sends_calls_through_the_queue(queue):
    inner = _conv_runner()
    q = queue()
    q.register("net", inner, BatchingConfig(max_batch=4, max_wait_ms=1))
    runner = BatchedRunner(q, "net", inner)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(runner(x), inner(x))
    assert q.batch_sizes == [2]


def test_batched_runner_in_a_job_turns_a_full_queue_into_a_retryable_error(queue):
    gated = GatedRunner()
    q = queue(max_pending=1)
    q.register("m", gated, BatchingConfig(max_batch=1, max_wait_ms=0))
    running = q.submit_async("m", _tagged(0))
    assert gated.entered.wait(5)
    waiting = q.submit_async("m", _tagged(1))
    with pytest.raises(RetryableInferenceError, match="queue is full.*retried"):
        BatchedRunner(q, "m", gated)(_tagged(2))
    gated.gate.set()
    assert [f.result(10).unique().item() for f in (running, waiting)] == [0, 2]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, BatchingConfig(1, 0.0)),
        (False, BatchingConfig(1, 0.0)),
        ({"max_batch": 8, "max_wait_ms": 10}, BatchingConfig(8, 10.0)),
        ({"max_batch": 4}, BatchingConfig(4, 10.0)),
    ],
    ids=["absent", "false", "both", "defaults"],
)
def test_batching_config_from_radinfer_json(value, expected):
    assert BatchingConfig.from_radinfer({} if value is None else {"batching": value}) == expected


def test_batching_config_rejects_zero_batch():
    with pytest.raises(ValueError, match="max_batch >= 1"):
        BatchingConfig.from_radinfer({"batching": {"max_batch": 0}})


def test_threads_are_not_leaked_by_close(queue):
    before = threading.active_count()
    queue().close()
    assert threading.active_count() <= before


def test_engine_routes_a_batching_bundle_through_its_device_queue(models_dir):
    from inference.engine import Engine
    from inference.registry import Registry

    from .conftest import tiny_unet, write_bundle

    write_bundle(models_dir, radinfer={"batching": {"max_batch": 4, "max_wait_ms": 1}})
    engine = Engine(Registry([models_dir]), "cpu")
    bundle = engine.registry.get("tiny")
    engine.ensure_loaded(bundle)
    try:
        assert isinstance(bundle.runner, BatchedRunner) and engine.queue is not None
        x = torch.randn(2, 1, 16, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(bundle.runner(x), tiny_unet()(x), atol=1e-5, rtol=1e-5)
        assert engine.queue.batch_sizes[-1] == 2
    finally:
        engine.queue.close()
