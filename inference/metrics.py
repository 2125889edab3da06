"""Prometheus metrics of the whole service, in one registry.

``REGISTRY`` is a dedicated registry (not prometheus-client's global one), so creating several apps in
one process (tests) never registers a metric twice. The API exposes it with :func:`render`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator

import psutil
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()

_JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered.", ["method", "route", "status"], registry=REGISTRY
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds", "HTTP request handling time.", ["route"], registry=REGISTRY
)
JOBS = Counter("jobs_total", "Jobs that reached a final state.", ["state", "model"], registry=REGISTRY)
JOB_STAGE_SECONDS = Histogram(
    "job_stage_seconds",
    "Time spent per job stage.",
    ["stage", "model"],
    buckets=_JOB_BUCKETS,
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "job_duration_seconds",
    "Run time of one job attempt, claim to final state.",
    ["model"],
    buckets=_JOB_BUCKETS,
    registry=REGISTRY,
)
DELIVERY_ERRORS = Counter(
    "delivery_errors_total", "Result delivery attempts that failed unexpectedly (a bug or the job store, not the PACS).",
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("queue_depth", "Jobs waiting in the queue.", registry=REGISTRY)


def bind_queue_depth(read: Callable[[], float]) -> None:
    """Make ``queue_depth`` call ``read`` at scrape time (e.g. ``lambda: store.count(JobState.queued)``).

    The last app to bind wins. A failing ``read`` (database down) reports NaN instead of failing the scrape.
    """

    def safe_read() -> float:
        try:
            return float(read())
        except Exception:  # noqa: BLE001 -- the other metrics must still be scraped
            return math.nan

    QUEUE_DEPTH.set_function(safe_read)


class DeviceMemoryCollector(Collector):
    """``device_memory_bytes{device,kind}``: process RSS always; CUDA allocated/reserved when torch uses CUDA."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("device_memory_bytes", "Memory in use.", labels=["device", "kind"])
        family.add_metric(["cpu", "rss"], float(psutil.Process().memory_info().rss))
        torch = sys.modules.get("torch")  # never import torch just to be scraped
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            for index in range(torch.cuda.device_count()):
                device = f"cuda:{index}"
                family.add_metric([device, "allocated"], float(torch.cuda.memory_allocated(index)))
                family.add_metric([device, "reserved"], float(torch.cuda.memory_reserved(index)))
        yield family


REGISTRY.register(DeviceMemoryCollector())


def render() -> tuple[bytes, str]:
    """The exposition body and its content type, for a ``/metrics`` endpoint."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
