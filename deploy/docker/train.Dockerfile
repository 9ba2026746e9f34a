# tabserve training image: torch (CPU build) + the trainer; writes bundles into the model repository volume.
#   docker compose --profile train run --rm trainer
FROM python:3.11.7-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
# torch's CPU wheel first, from PyTorch's index: the default PyPI wheel brings gigabytes of CUDA libraries.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY bundle/ bundle/
COPY service/ service/
COPY training/ training/
RUN pip install -c constraints.txt ".[train]" \
    && useradd --system --uid 10001 --create-home --home-dir /home/tabserve tabserve \
    && mkdir /models && chown tabserve /models
USER 10001
WORKDIR /home/tabserve
HEALTHCHECK NONE
CMD ["python", "-m", "training", "--help"]
