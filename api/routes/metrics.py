"""Prometheus metrics (admin only: they reveal load and model usage)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import MetricsReader
from inference import metrics as inference_metrics

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics: requests, job latency per stage and model, queue depth, device memory",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(_: MetricsReader) -> Response:
    body, content_type = inference_metrics.render()
    return Response(body, media_type=content_type)
