# Two commands do all set-up on a fresh machine (a virtual environment in .venv, made once):
#   make run    execute the whole series headless, in order (full training on a GPU, quick mode without)
#   make test   unit tests, the notebook/twin checks, and nbval over every notebook
# Offline? Point at a folder-per-class copy of CIFAR-10:  make run DATA=/path/to/cifar10

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?=
# pytest-xdist workers for make test (0: one process); each notebook runs whole on one worker (conftest.py)
JOBS ?= 2
ifneq ($(strip $(DATA)),)
export VIT_DATA_DIR := $(abspath $(DATA))
endif

.PHONY: run test setup sync clean release

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python tools/run_series.py $(ARGS)

test: $(STAMP)
	VIT_PROGRESS=0 $(BIN)/python -m pytest -n $(JOBS) $(ARGS)

# On a GPU: re-execute every notebook in place, retrain, and refresh the released weights and release/ (see tools/run_series.py).
release: $(STAMP)
	$(BIN)/python tools/run_series.py --release $(ARGS)

# After editing a twin in notebooks/py/: refresh headers, then carry the change into the .ipynb (outputs kept).
sync: $(STAMP)
	$(BIN)/python tools/sync_headers.py
	$(BIN)/jupytext --sync notebooks/py/[0-9][0-9]_*.py

clean:
	rm -rf outputs checkpoints
