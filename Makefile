# `make demo` and `make test` set up .venv on first use, then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format install clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] <= (3, 12), "keras_deeplab needs Python 3.11 or 3.12"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# tensorflow-cpu (the requirement before `tensorflow` + the `gpu` extra) and tensorflow share one
# `tensorflow/` folder: installing one over the other, then removing either, deletes that folder.
# A venv that has tensorflow-cpu loses both, and the install below brings `tensorflow` back whole.
$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	if $(BIN)/python -m pip show --quiet tensorflow-cpu >/dev/null 2>&1; then \
		$(BIN)/python -m pip uninstall --quiet --yes tensorflow-cpu tensorflow; fi
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/keras-deeplab demo

lint: $(STAMP)
	$(BIN)/ruff check keras_deeplab tests examples benchmarks export
	$(BIN)/ruff format --check keras_deeplab tests examples benchmarks export

format: $(STAMP)
	$(BIN)/ruff check --fix keras_deeplab tests examples benchmarks export
	$(BIN)/ruff format keras_deeplab tests examples benchmarks export

test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
