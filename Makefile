# tabserve: `make run` sets up and serves the default model; `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
REPOSITORY ?= models
DEFAULT_MODEL ?= iris
DATASET ?= iris
NAME ?= $(DATASET)
ARGS ?=
PORT ?= 8000
SERVE_ARGS ?=
BENCH_DURATION ?= 8

.PHONY: setup tools run serve test lint format train retrain rollback canary rollout-status promote rollout-stop \
	verify quality bench bench-loop bench-batch score stress clean

setup: $(STAMP)

# torch first, pinned: the local CPU build. A looser torch requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[train,serve,batch,ray,dev]"
	touch $(STAMP)

# Debian packages the tests and benchmarks run for real: Prometheus (+ promtool), docker-compose (to validate
# the compose file without an engine), podman + runc + catatonit (kube play's pause process) + mmdebstrap +
# podman-compose (the tests build the images from a local Debian base and run them, the compose services and the
# Kubernetes Deployment; with the CNI plugins, not netavark: the network backend checked here), hey (load
# generator). `command:package[+package]`, installed only when the command is missing. kubectl (`kubectl
# kustomize`) is not among them: Debian's kubernetes-client (1.20) is too old; https://kubernetes.io/docs/tasks/tools/
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := prometheus:prometheus promtool:prometheus docker-compose:docker-compose \
	podman:podman+containernetworking-plugins runc:runc catatonit:catatonit mmdebstrap:mmdebstrap \
	podman-compose:podman-compose pg_ctlcluster:postgresql
tools:
	@missing="$$(for p in $(APT_PACKAGES); do command -v $${p%%:*} >/dev/null || echo $${p##*:} | tr + '\n'; done | sort -u)"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

## The main job: serve the repository (training the default model first if the repository has none).
run: setup
	@test -n "$$(ls -d $(REPOSITORY)/*/[0-9]* 2>/dev/null)" || $(PY) -m training train --dataset $(DEFAULT_MODEL) --name $(DEFAULT_MODEL) --repository $(REPOSITORY)
	$(PY) -m service --repository $(REPOSITORY) --port $(PORT) $(SERVE_ARGS)

serve: run

test: setup tools lint
	$(PY) -m pytest $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## make train DATASET=wine [NAME=wine] [ARGS="--hidden 64,32"]
train: setup
	$(PY) -m training train --dataset $(DATASET) --name $(NAME) --repository $(REPOSITORY) $(ARGS)

## make retrain MODEL=iris [DATA=new.csv] [ARGS="--f1-tolerance 0.02"]: publish a challenger only if not worse
## (exit code 3 when the gate rejects it). The running server picks the new version up by itself.
## DATA=feedback: train on the prediction log's labelled rows (ARGS="--since 7d --mix-original"); CANARY=25: the
## champion keeps serving and the running server tries the challenger as an automatic canary at 25 %.
retrain: setup
	@test -n "$(MODEL)" || { echo "usage: make retrain MODEL=<name> [DATA=<file or dataset>]"; exit 2; }
	$(PY) -m training retrain --name $(MODEL) --repository $(REPOSITORY) $(if $(DATA),--data $(DATA)) \
		$(if $(CANARY),--canary $(CANARY) --server http://127.0.0.1:$(PORT)) $(ARGS)

## make rollback MODEL=iris [VERSION=2]: an earlier version answers by default; nothing is deleted.
rollback: setup
	@test -n "$(MODEL)" || { echo "usage: make rollback MODEL=<name> [VERSION=<v>]"; exit 2; }
	$(PY) -m training rollback --name $(MODEL) --repository $(REPOSITORY) $(if $(VERSION),--version $(VERSION)) $(ARGS)

## Rollouts on the running server (PORT): make canary MODEL=iris VERSION=2 PERCENT=25 [ARGS=--manual];
## make rollout-status MODEL=iris; make promote MODEL=iris; make rollout-stop MODEL=iris (docs/production-loop.md).
canary: setup
	@test -n "$(MODEL)" -a -n "$(VERSION)" || { echo "usage: make canary MODEL=<name> VERSION=<v> [PERCENT=10]"; exit 2; }
	@PORT=$(PORT) $(PY) -m service.rollouts canary --model $(MODEL) --version $(VERSION) --percent $(or $(PERCENT),10) $(ARGS)

rollout-status promote rollout-stop: setup
	@test -n "$(MODEL)" || { echo "usage: make $@ MODEL=<name>"; exit 2; }
	@PORT=$(PORT) $(PY) -m service.rollouts $(patsubst rollout-%,%,$@) --model $(MODEL)

## make score MODEL=digits INPUT=table.parquet OUTPUT=scores.parquet [ARGS="--keep row_id --engine ray"]: score a whole
## table with the version the server answers with; rejects and OUTPUT.summary.json beside it (docs/batch-scoring.md).
score: setup
	@test -n "$(MODEL)" -a -n "$(INPUT)" -a -n "$(OUTPUT)" || { echo "usage: make score MODEL=<name> INPUT=<file, folder or glob> OUTPUT=<out.parquet|out.csv>"; exit 2; }
	$(PY) -m batch --repository $(REPOSITORY) --name $(MODEL) --input '$(INPUT)' --output $(OUTPUT) $(ARGS)

## make verify FOLDER=models/iris/1
verify: setup
	$(PY) -m training verify $(FOLDER)

## Ours vs scikit-learn's MLPClassifier on every built-in dataset.
quality: setup
	$(PY) -m training quality

## Four servers on one model, one load generator (hey): make bench [BENCH_DURATION=8] (about 3-5 minutes).
bench: setup
	@command -v hey >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq hey; }
	BENCH_DURATION=$(BENCH_DURATION) $(PY) -m benchmarks.run

## The production loop end to end (weak champion, better challenger, labels, decisions): make bench-loop (~3 min).
bench-loop: setup
	$(PY) -m benchmarks.production_loop

## Batch scoring against plain ONNX Runtime on 2,000,000 rows, a SIGKILL and --resume, Ray: make bench-batch (~5 min).
bench-batch: setup
	$(PY) -m benchmarks.batch $(ARGS)

## Overload, abandoned requests, slow clients, a worker kill and a soak, with verdicts: make stress (about 5 minutes).
stress: setup
	@command -v hey >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq hey; }
	$(PY) -m benchmarks.stress

clean:
	rm -rf runs .pytest_cache .ruff_cache
