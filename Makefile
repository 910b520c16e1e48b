# `make train` and `make test` each set up .venv first (once; again only when the dependencies change).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train test test-fast format bench shipped-model image-gpu image-cpu clean

install: $(STAMP)

# constraints.txt pins a known-good resolution (torch/torchvision from this machine's disk), so a fresh
# install needs no backtracking; pyproject.toml keeps the ranges a user's own environment may take.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) jobs/train.py $(ARGS)

test: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The shipped model, from scratch: hours on a CPU (jobs/configs/shipped.yaml; rerun to resume), then packaged.
shipped-model: $(STAMP)
	$(PY) jobs/train.py --config jobs/configs/shipped.yaml $(ARGS)
	$(PY) -m deblur.models.shipped runs/shipped

bench: $(STAMP)
	for b in benchmarks/[a-z]*.py; do $(PY) $$b || exit 1; done

# Container images for ray-cluster.yaml and cluster/kuberay (tag and push to your registry).
IMAGE_REPO ?= deblur
image-gpu:
	docker build -f infra/docker/Dockerfile -t $(IMAGE_REPO):gpu .

image-cpu:
	docker build -f infra/docker/Dockerfile.cpu -t $(IMAGE_REPO):cpu .

clean:
	rm -rf $(VENV) .pytest_cache runs
