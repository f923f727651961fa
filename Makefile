# bincounter: the two set-up commands are `make demo` and `make test`; both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The dev/test environment's torch. The image pins its own (Dockerfile: torch 2.9.1, CUDA 12.8).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
IMAGE ?= bincounter:local
CPU_IMAGE ?= bincounter:cpu
PYTEST_ARGS ?=

.PHONY: help venv demo demo-cpu image image-cpu system-deps test test-fast acceptance lint bench clean
help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[dev,aws]'
	touch $@

venv: $(BIN)/.installed  ## create .venv: torch, the package, the SageMaker SDK, the test tools

demo: venv system-deps image  ## the main job: image -> 2-instance SageMaker local-mode training -> local endpoint -> evaluation
	$(BIN)/python local_test/train_local.py --workdir runs/local --image $(IMAGE)
	$(BIN)/python local_test/serve_local.py --workdir runs/local --image $(IMAGE)

demo-cpu: venv  ## the same loop without Docker: in-process training and evaluation on this machine
	$(BIN)/bincounter demo --out runs/demo

image:  ## build the image locally (mmdebstrap base; starts dockerd if needed)
	bash container/build_local.sh --tag $(IMAGE)

image-cpu:  ## build the CPU serving image (ONNX Runtime, no torch) locally
	bash container/build_local.sh --target serve-cpu --tag $(CPU_IMAGE)

# Debian packages the Docker tier, local mode and the lint need (docker.io + mmdebstrap come with `make image`).
SYSTEM_TOOLS := shellcheck:shellcheck docker-registry:docker-registry docker-compose:docker-compose
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

test: venv system-deps image image-cpu  ## everything: fast tier + Docker tier (what CI runs)
	BINCOUNTER_IMAGE=$(IMAGE) BINCOUNTER_CPU_IMAGE=$(CPU_IMAGE) BINCOUNTER_REQUIRE_DOCKER=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

acceptance: venv system-deps image  ## the README's long commands at their defaults (the local pipeline: ~8 min)
	BINCOUNTER_IMAGE=$(IMAGE) BINCOUNTER_REQUIRE_DOCKER=1 BINCOUNTER_ACCEPTANCE=1 $(BIN)/python -m pytest -m acceptance $(PYTEST_ARGS)

test-fast: venv  ## the fast tier only (no Docker)
	$(BIN)/python -m pytest -m "not docker" $(PYTEST_ARGS)

lint: venv  ## ruff + shell syntax
	$(BIN)/ruff check src tests bench
	shellcheck build_and_push.sh container/build_local.sh container/entrypoint.sh .ci/run

bench: venv  ## learning check on synthetic data (prints a table, writes bench/results/*.json)
	$(BIN)/python bench/learning.py

clean:  ## remove the venv and run outputs (not the Docker images)
	rm -rf $(VENV) runs bench/results .pytest_cache
