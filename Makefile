# evtp: `make eval` runs the main job, `make test` runs the test suite (both install first if needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: install eval test regression baseline train-tiny clean

# Creates .venv with the project installed editable (+ test extras). Does nothing if .venv exists.
# torch is installed first at a pinned version: on these machines that is the CPU build.
install:
	@if [ -d "$(VENV)" ]; then \
		echo "$(VENV) exists; skipping install (delete it to reinstall)"; \
	else \
		{ $(PYTHON) -m venv "$(VENV)" && \
		  "$(BIN)/pip" install --quiet --upgrade pip && \
		  "$(BIN)/pip" install --quiet "$(TORCH_PIN)" && \
		  "$(BIN)/pip" install --quiet -e ".[test]"; } || { rm -rf "$(VENV)"; exit 1; }; \
	fi

eval: install
	$(BIN)/evtp prune-eval

test: install
	$(BIN)/python -m pytest -q

# The CI regression gate on its own, and a deliberate refresh of its committed baseline.
regression: install
	$(BIN)/python -m evtp_cli.bench.regression

baseline: install
	$(BIN)/python -m evtp_cli.bench.regression --update

# Retrain tiny-ivs with the wall-clock budgets the shipped weights used (25 + 65 minutes on 2 CPU cores;
# the cosine schedule follows the steps the budget allows, so the step count depends on the machine;
# evtp_cli/assets/README.md), then export into the package assets.
train-tiny: install
	$(BIN)/python -m evtp_cli.models.tiny_train --stage 1 --minutes 25 --batch 24 --lr 2e-3 --out runs/tiny
	$(BIN)/python -m evtp_cli.models.tiny_train --stage 2 --minutes 65 --batch 24 --lr 1.5e-3 --init runs/tiny/stage1.safetensors --out runs/tiny
	$(BIN)/python -m evtp_cli.models.tiny_train --export runs/tiny/stage2.safetensors

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
