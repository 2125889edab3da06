# radinfer for NVIDIA GPUs; the same install order as the Makefile: torch (pinned) first, then the project.
# Build: docker build -t radinfer .
# Run:   docker run --gpus all -p 8000:8000 -v radinfer-data:/data -e RADINFER_API_KEYS=admin:<long random key> radinfer
#
# CUDA 13 throughout: torch 2.13's Linux wheel depends on CUDA 13 and cuDNN 9 wheels from PyPI (cuda-toolkit 13.0,
# nvidia-cudnn-cu13), and the gpu extra's onnxruntime-gpu[cuda,cudnn] (>= 1.27, CUDA 13 builds) on the same ones, so
# the CUDA libraries come with them. NVIDIA's "base" image adds the CUDA 13 runtime and the settings the NVIDIA
# Container Toolkit reads: every GPU with its compute libraries, and NVIDIA_REQUIRE_CUDA, which the toolkit checks
# against the host's driver (CUDA 13 needs 580 or newer) when the container starts, instead of the server quietly
# running on the CPU. Its CUDA major version must stay torch's: a CUDA 12 image would add a second, unused CUDA.
FROM nvidia/cuda:13.0.2-base-ubuntu24.04

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

# Not pinned (DL3008): the release's packages then get Ubuntu's security updates at each build.
# hadolint ignore=DL3008
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

RUN groupadd --system --gid 10001 radinfer \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent radinfer \
    && mkdir -p /data && chown 10001:10001 /data
# numeric, so the runtime (and Kubernetes' runAsNonRoot) can tell it is not root without the image's passwd
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"RADINFER_PORT\"]}/healthz', timeout=4)"]

CMD ["radinfer", "serve"]
