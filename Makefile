# evtp: `make eval` runs the main job, `make test` runs the test suite (both install first if needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: install eval test train clean

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

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
