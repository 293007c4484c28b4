# `make demo` and `make test` set up .venv on first use, then run.
# The distribution's interpreter first: Debian's /usr/bin/python3.11 is built with PGO and LTO,
# a pyenv build (first on PATH here) without them; the suite ran 14% faster in a venv of the
# former (tests/test_registry.py + test_models.py on 2 workers, 179 -> 154 s, AMD EPYC).
# `make PYTHON=/path/to/python3.x` picks another one.
PYTHON ?= $(shell for p in /usr/bin/python3.11 /usr/bin/python3.12; do [ -x $$p ] && echo $$p && exit; done; \
	command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format install clean parity parity-venv

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

# Bytecode caches on even where the environment turns them off (PYTHONDONTWRITEBYTECODE): each
# xdist worker and each of the ~40 subprocesses of the suite would otherwise recompile the package
# and re-rewrite the test modules (collection 15 -> 10 s per worker on the 2-core CI machine).
test: lint
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# PyTorch parity (docs/parity.md): torch and the references live in their own venv, never in .venv.
PARITY_VENV := benchmarks/.venv-parity
PARITY_PY := $(PARITY_VENV)/bin/python
PARITY_STAMP := $(PARITY_VENV)/.installed

$(PARITY_STAMP): benchmarks/parity/requirements.txt
	python3.11 -m venv $(PARITY_VENV)
	$(PARITY_PY) -m pip install --quiet --upgrade pip
	$(PARITY_PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PARITY_PY) -m pip install --quiet -r benchmarks/parity/requirements.txt
	$(PARITY_PY) -m pip install --quiet --no-deps torchfcn==1.9.7 mit-semseg==1.0.0 refinenet==0.9.5
	$(PARITY_PY) -m benchmarks.parity.torch_side --check-imports
	touch $(PARITY_STAMP)

parity-venv: $(PARITY_STAMP)

parity: $(STAMP) $(PARITY_STAMP)
	$(BIN)/python -m benchmarks.parity
