# tabserve CPU serving image: LitServe + ONNX Runtime, no torch, no build tools.
#   docker build -f deploy/docker/serve.Dockerfile -t tabserve-serve .
# The default model (models/) is baked in at /models; a named volume mounted there starts as a copy of it.
# Any Debian-like image with Python 3.11 and venv works as the base (the tests build from a local Debian one).
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
FROM ${BASE_IMAGE} AS build
# pip reads PIP_INDEX_URL: pass your mirror, if you use one, with --build-arg.
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies (from pyproject.toml) in their own layer: a code or README change rebuilds only the layers after it.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print(*p['dependencies'], *p['optional-dependencies']['serve'], sep=chr(10))" > requirements.txt \
    && /opt/venv/bin/pip install -c constraints.txt -r requirements.txt
COPY README.md ./
COPY bundle/ bundle/
COPY service/ service/
RUN /opt/venv/bin/pip install --no-deps .

FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --create-home --home-dir /home/tabserve tabserve \
    && mkdir /models /state && chown tabserve /models /state
COPY --from=build /opt/venv /opt/venv
COPY --chown=tabserve models/ /models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TABSERVE_HOST=0.0.0.0 \
    TABSERVE_REPOSITORY=/models \
    TABSERVE_STATE_DIR=/state \
    TABSERVE_LOG_FORMAT=json
USER 10001
WORKDIR /home/tabserve
# Port 8000 unless TABSERVE_PORT (or, with no TABSERVE_PORT, PORT: KServe, Cloud Run) says otherwise; the Open
# Inference Protocol over gRPC on 8001 unless TABSERVE_GRPC_PORT says otherwise (0: none).
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; port = os.environ.get('TABSERVE_PORT') or os.environ.get('PORT', '8000'); u.urlopen(f'http://127.0.0.1:{port}/v2/health/ready', timeout=2)"]
CMD ["python", "-m", "service"]
