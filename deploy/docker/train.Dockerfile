# tabserve training image: torch (CPU build) + the trainer; writes bundles into the model repository volume.
#   docker compose --profile train run --rm trainer
# Any Debian-like image with Python 3.11 and venv works as the base (the tests build from a local Debian one).
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
FROM ${BASE_IMAGE}
# pip reads PIP_INDEX_URL: pass your mirror, if you use one, with --build-arg.
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# torch's CPU wheel first, from PyTorch's index: the default PyPI wheel brings gigabytes of CUDA libraries.
# TORCH_SOURCE says where pip finds it; e.g. a folder of wheels mounted into the build (what the tests do):
#   podman build -v "$PWD/wheels:/wheels:ro" --build-arg TORCH_SOURCE="--find-links /wheels" ...
ARG TORCH_SOURCE="--index-url https://download.pytorch.org/whl/cpu"
# hadolint ignore=SC2086,DL3013
RUN pip install $TORCH_SOURCE torch==2.13.0
# Dependencies (from pyproject.toml) in their own layer: a code or README change rebuilds only the layers after it.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print(*p['dependencies'], *p['optional-dependencies']['train'], sep=chr(10))" > requirements.txt \
    && pip install -c constraints.txt -r requirements.txt
COPY README.md ./
COPY bundle/ bundle/
COPY service/ service/
COPY training/ training/
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --create-home --home-dir /home/tabserve tabserve \
    && mkdir /models && chown tabserve /models
USER 10001
WORKDIR /home/tabserve
HEALTHCHECK NONE
CMD ["python", "-m", "training", "--help"]
