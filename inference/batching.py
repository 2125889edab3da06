"""One work queue per device with dynamic batching of fixed-size inputs and two priorities.

Job threads (the Worker's) do their own pre- and post-processing and call ``DeviceQueue.submit`` only for
the network; one thread per device runs batches. So while the device runs one batch, other jobs decode
DICOM or build findings: the overlap comes from the callers' threads, not from this module.

Batching: requests for the same model with the same per-sample shape, dtype and device are concatenated along
the batch axis, up to the model's ``max_batch`` samples, waiting at most ``max_wait_ms`` after the oldest
request for more to arrive (radinfer.json ``"batching": {"max_batch": 8, "max_wait_ms": 10}``). The
interactive priority is served before bulk; within a priority, oldest first. Each caller gets back exactly
the rows of the output that belong to its input. The queue is bounded: ``submit`` raises QueueFullError
(HTTP 503 with Retry-After) when ``max_pending`` requests are waiting.

Several GPUs: each has its own Engine with its own queue and model replicas (``inference.replicas``), and
whole jobs are spread over them.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.data import MetaTensor

from inference.errors import InferenceError, QueueFullError, RetryableInferenceError
from inference.jobs.store import PRIORITY_BULK, PRIORITY_INTERACTIVE
from inference.runners import Runner

__all__ = [
    "PRIORITY_BULK",
    "PRIORITY_INTERACTIVE",
    "BatchedRunner",
    "BatchingConfig",
    "DeviceQueue",
    "request_priority",
]

_PRIORITY: ContextVar[int] = ContextVar("radinfer_request_priority", default=PRIORITY_INTERACTIVE)


@contextmanager
def request_priority(priority: int) -> Iterator[None]:
    """Run the block's queue submissions (e.g. a job's task through ``BatchedRunner``) at ``priority``."""
    token = _PRIORITY.set(priority)
    try:
        yield
    finally:
        _PRIORITY.reset(token)


@dataclass(frozen=True)
class BatchingConfig:
    max_batch: int = 8
    max_wait_ms: float = 10.0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_wait_ms < 0:
            raise ValueError(
                f"batching needs max_batch >= 1 and max_wait_ms >= 0, got {self.max_batch}, {self.max_wait_ms}."
            )

    @classmethod
    def from_radinfer(cls, radinfer: dict[str, Any]) -> BatchingConfig:
        """radinfer.json ``batching``; absent or ``false`` means no batching (max_batch 1)."""
        value = radinfer.get("batching")
        if not value:
            return cls(max_batch=1, max_wait_ms=0.0)
        if not isinstance(value, dict):
            raise TypeError(f"radinfer.json 'batching' must be an object or false, got {value!r}.")
        return cls(
            max_batch=int(value.get("max_batch", cls.max_batch)),
            max_wait_ms=float(value.get("max_wait_ms", cls.max_wait_ms)),
        )


@dataclass(order=True)
class _Request:
    priority: int
    seq: int
    model: str = field(compare=False)
    tensor: torch.Tensor = field(compare=False)
    future: Future = field(compare=False)
    enqueued: float = field(compare=False)

    @property
    def key(self) -> tuple[str, tuple[int, ...], torch.dtype, torch.device]:
        """What requests must share to be concatenated: torch.cat refuses a CPU and a GPU tensor (a 3D job whose
        volume stays on the GPU sends GPU windows, one that does not fit sends CPU windows)."""
        return self.model, tuple(self.tensor.shape[1:]), self.tensor.dtype, self.tensor.device


@dataclass
class _Model:
    runner: Runner
    config: BatchingConfig


class DeviceQueue:
    """The single consumer of one device: runs batches of queued requests on one thread."""

    def __init__(self, device: torch.device | str, *, max_pending: int = 256, retry_after_s: int = 2) -> None:
        self.device = torch.device(device)
        self.max_pending = max_pending
        self.retry_after_s = retry_after_s
        self.batch_sizes: list[int] = []  # every batch run, for metrics and tests
        self._models: dict[str, _Model] = {}
        self._heap: list[_Request] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._running = 0
        self._thread = threading.Thread(target=self._loop, name=f"device-queue-{self.device}", daemon=True)
        self._thread.start()

    def register(self, model: str, runner: Runner, config: BatchingConfig | None = None) -> None:
        with self._cond:
            self._models[model] = _Model(runner, config or BatchingConfig())

    def has(self, model: str) -> bool:
        return model in self._models

    @property
    def pending(self) -> int:
        """Requests waiting (not yet running)."""
        with self._cond:
            return len(self._heap)

    @property
    def load(self) -> int:
        """Requests waiting plus those in the batch running now."""
        with self._cond:
            return len(self._heap) + self._running

    def submit_async(self, model: str, tensor: torch.Tensor, *, priority: int | None = None) -> Future:
        """Queue ``tensor`` (batch, ...) for ``model``; the future resolves to the output rows for it."""
        if model not in self._models:
            raise InferenceError(f"Model {model!r} is not registered on the {self.device} queue.")
        if tensor.dim() < 1 or len(tensor) < 1:
            raise ValueError(
                f"submit needs a tensor with a leading batch axis, got shape {tuple(tensor.shape)}."
            )
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise InferenceError(f"The {self.device} queue is closed.")
            if len(self._heap) >= self.max_pending:
                raise QueueFullError(
                    f"The {self.device} work queue is full ({len(self._heap)} requests waiting); "
                    f"retry after {self.retry_after_s} s.",
                    retry_after_s=self.retry_after_s,
                )
            chosen = _PRIORITY.get() if priority is None else priority
            request = _Request(chosen, next(self._seq), model, tensor, future, time.monotonic())
            heapq.heappush(self._heap, request)
            self._cond.notify_all()
        return future

    def submit(
        self, model: str, tensor: torch.Tensor, *, priority: int | None = None, timeout: float | None = None
    ) -> torch.Tensor:
        """Blocking ``submit_async``: the output for ``tensor`` (or the runner's exception)."""
        return self.submit_async(model, tensor, priority=priority).result(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the queued requests have run."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- the device thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)
            with self._cond:
                self._running = 0

    def _next_batch(self) -> list[_Request] | None:
        """Wait for work, then gather the head request's batch (waiting up to its model's max wait)."""
        with self._cond:
            while not self._heap:
                if self._closed:
                    return None
                self._cond.wait()
            head = self._heap[0]
            config = self._models[head.model].config
            deadline = head.enqueued + config.max_wait_ms / 1000
            while not self._closed:
                if self._fill(head) >= config.max_batch:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                if self._heap[0] is not head:  # a more urgent request arrived: serve it first
                    head = self._heap[0]
                    config = self._models[head.model].config
                    deadline = min(deadline, head.enqueued + config.max_wait_ms / 1000)
            return self._take(head, config.max_batch)

    def _compatible(self, head: _Request) -> list[_Request]:
        """Requests that can join ``head``'s batch, in service order (head first)."""
        return [r for r in sorted(self._heap) if r.key == head.key]

    def _fill(self, head: _Request) -> int:
        return sum(len(r.tensor) for r in self._compatible(head))

    def _take(self, head: _Request, max_batch: int) -> list[_Request]:
        taken, samples = [], 0
        for request in self._compatible(head):
            if taken and samples + len(request.tensor) > max_batch:
                break
            taken.append(request)
            samples += len(request.tensor)
        chosen = {id(r) for r in taken}
        self._heap = [r for r in self._heap if id(r) not in chosen]
        heapq.heapify(self._heap)
        self._running = len(taken)
        return taken

    def _run(self, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        runner = self._models[live[0].model].runner
        try:
            inputs = live[0].tensor if len(live) == 1 else torch.cat([r.tensor for r in live])
            self.batch_sizes.append(len(inputs))
            output = runner(inputs)
            if len(output) != len(inputs):
                raise InferenceError(
                    f"Runner {runner.name!r} returned {len(output)} rows for a batch of {len(inputs)}."
                )
        except Exception as exc:  # noqa: BLE001 - every caller in the batch must learn about the failure
            for request in live:
                request.future.set_exception(exc)
            return
        for request, rows in zip(live, torch.split(output, [len(r.tensor) for r in live]), strict=True):
            request.future.set_result(rows)


class BatchedRunner:
    """A Runner that sends each call through a DeviceQueue, so calls from several jobs share batches.

    The priority is the caller's ``request_priority`` (interactive when unset). Inside a running job a full
    device queue is transient, so it surfaces as RetryableInferenceError (the job is retried), while
    callers of ``DeviceQueue.submit`` itself get QueueFullError (503 with Retry-After).
    """

    def __init__(self, queue: DeviceQueue, model: str, runner: Runner) -> None:
        self.queue, self.model, self.inner = queue, model, runner
        self.name = f"{runner.name}+batching"
        self.device = runner.device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if isinstance(batch, MetaTensor):
            batch = batch.as_tensor()
        try:
            return self.queue.submit(self.model, batch)
        except QueueFullError as exc:
            raise RetryableInferenceError(f"{exc} The job will be retried.") from exc
