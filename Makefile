# Two commands on a fresh clone:
#   make repro   # create .venv if missing, install, run the whole DVC pipeline (synthetic default)
#   make test    # create .venv if missing, install, run the test suite
#   make real DATA=<folder or archive>   # the real-data configuration (configs/real.yaml) via dvc exp run
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed

export PATH := $(BIN):$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: install repro test bench real clean-venv

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

repro: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# RECIPE=cpu|gpu forces a recipe (default: gpu when torch sees CUDA); REAL_ARGS='-S epochs=1' adds overrides.
real: $(if $(DATA),$(STAMP))
	@test -n "$(DATA)" || { $(PYTHON) src/real.py; exit 2; }
	$(BIN)/python src/real.py --data "$(DATA)" --recipe $(or $(RECIPE),auto) -- $(REAL_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
