# `make train` and `make test` each set up .venv first (once; again only when the dependencies change).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser train test test-gpu test-fast format bench shipped-model image-gpu image-cpu clean

install: $(STAMP)

# constraints.txt pins a known-good resolution (torch/torchvision from this machine's disk), so a fresh
# install needs no backtracking; pyproject.toml keeps the ranges a user's own environment may take.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/deblur train $(ARGS)

# The upload page's test drives a real headless Chromium: Debian's chromium and chromium-driver, installed here
# (once) where apt-get can; elsewhere install both yourself, or that test fails saying so.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "no apt-get here: install chromium and chromedriver yourself, or the browser test fails"; \
	else echo "installing chromium and chromium-driver (apt-get) for the browser test"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
	  echo "apt-get could not install chromium (not root? offline?): the browser test will fail until it is"; \
	fi

test: $(STAMP) browser
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# On a machine with an NVIDIA GPU: the `gpu` tests (every engine's numbers against the fp32 reference on a real
# photo, actors on the device they claim; TensorRT where its wheels install, else those tests say why they skip),
# then the GPU columns of the engines benchmark on the shipped model.
test-gpu: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,tensorrt]' || \
	echo "the tensorrt extra did not install (NVIDIA's wheels unreachable?): the TensorRT tests will skip"
	$(PY) -m pytest -m gpu -rs $(PYTEST_ARGS)
	$(PY) benchmarks/engines.py --model default --sizes 800x800,1280x720

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The shipped model, from scratch: hours on a CPU (deblur/configs/shipped.yaml; rerun to resume), then packaged.
shipped-model: $(STAMP)
	$(VENV)/bin/deblur train --config shipped $(ARGS)
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
