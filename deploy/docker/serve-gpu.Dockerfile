# tabserve GPU serving image: onnxruntime-gpu (CUDA 12, cuDNN 9) instead of onnxruntime, no torch.
#   docker build -f deploy/docker/serve-gpu.Dockerfile -t tabserve-serve-gpu .
#   docker run --gpus all -p 8000:8000 tabserve-serve-gpu      (TABSERVE_DEVICE=auto picks CUDA when it sees a GPU)
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY bundle/ bundle/
COPY service/ service/
# The gpu extra replaces onnxruntime by onnxruntime-gpu: never both in one environment.
RUN /opt/venv/bin/pip install -c constraints.txt ".[gpu]"

FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/tabserve tabserve \
    && mkdir /models && chown tabserve /models
COPY --from=build /opt/venv /opt/venv
COPY --chown=tabserve models/ /models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TABSERVE_HOST=0.0.0.0 \
    TABSERVE_PORT=8000 \
    TABSERVE_REPOSITORY=/models \
    TABSERVE_DEVICE=auto
USER 10001
WORKDIR /home/tabserve
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
CMD ["python", "-m", "service"]
