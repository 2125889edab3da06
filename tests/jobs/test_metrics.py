"""The service metrics registry: exposition, queue depth callback, device memory."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from inference import metrics
from inference.jobs.store import JobState, JobStore, metadata, sqlite_url


def _samples() -> dict[tuple[str, tuple], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_render_exposes_process_rss_as_device_memory() -> None:
    rss = _samples()[("device_memory_bytes", (("device", "cpu"), ("kind", "rss")))]
    assert rss > 10 * 2**20  # a Python process with SQLAlchemy loaded uses well over 10 MiB


def test_queue_depth_reads_the_store_at_scrape_time(store: JobStore) -> None:
    metrics.bind_queue_depth(lambda: store.count(JobState.queued))
    store.create()
    store.create()
    assert _samples()[("queue_depth", ())] == 2
    store.claim_next("w")
    assert _samples()[("queue_depth", ())] == 1


def test_queue_depth_is_nan_when_the_store_fails(tmp_path) -> None:
    store = JobStore(sqlite_url(tmp_path))
    metrics.bind_queue_depth(lambda: store.count(JobState.queued))
    metadata.drop_all(store.engine)
    assert math.isnan(_samples()[("queue_depth", ())])
    metrics.bind_queue_depth(lambda: 0)


def test_http_metrics_record_labels() -> None:
    metrics.HTTP_REQUESTS.labels(method="GET", route="/healthz", status="200").inc()
    metrics.HTTP_DURATION.labels(route="/healthz").observe(0.01)
    samples = _samples()
    key = ("http_requests_total", (("method", "GET"), ("route", "/healthz"), ("status", "200")))
    assert samples[key] >= 1
    assert samples[("http_request_duration_seconds_count", (("route", "/healthz"),))] >= 1
