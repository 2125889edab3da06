# radinfer on a CUDA-capable base; the same install order as the Makefile: torch (pinned) first, then the project.
# Build: docker build -t radinfer .
# Run:   docker run --gpus all -p 8000:8000 -v radinfer-data:/data -e RADINFER_API_KEYS=admin:<long random key> radinfer
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ARG TORCH_VERSION=2.13.0
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    RADINFER_HOST=0.0.0.0 \
    RADINFER_PORT=8000 \
    RADINFER_DATA_DIR=/data

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

RUN pip install "torch==${TORCH_VERSION}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY api ./api
COPY dicom_io ./dicom_io
COPY inference ./inference
COPY models ./models
RUN pip install -e '.[gpu]'

RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent radinfer \
    && mkdir -p /data && chown radinfer:radinfer /data
USER radinfer
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"RADINFER_PORT\"]}/healthz', timeout=4)"

CMD ["radinfer", "serve"]
