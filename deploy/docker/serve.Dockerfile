# tabserve CPU serving image: LitServe + ONNX Runtime, no torch, no build tools.
#   docker build -f deploy/docker/serve.Dockerfile -t tabserve-serve .
# The default model (models/) is baked in at /models; a named volume mounted there starts as a copy of it.
FROM python:3.11.7-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY bundle/ bundle/
COPY service/ service/
RUN /opt/venv/bin/pip install -c constraints.txt ".[serve]"

FROM python:3.11.7-slim-bookworm
RUN useradd --system --uid 10001 --create-home --home-dir /home/tabserve tabserve \
    && mkdir /models && chown tabserve /models
COPY --from=build /opt/venv /opt/venv
COPY --chown=tabserve models/ /models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TABSERVE_HOST=0.0.0.0 \
    TABSERVE_PORT=8000 \
    TABSERVE_REPOSITORY=/models
USER 10001
WORKDIR /home/tabserve
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
CMD ["python", "-m", "service"]
