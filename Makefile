# Two commands on a fresh clone:
#   make repro   # create .venv if missing, install, run the whole DVC pipeline (synthetic default)
#   make test    # create .venv if missing, install, run the test suite
#   make real DATA=<folder or archive> [EXTERNAL=<folder>]   # the real-data configuration (configs/real.yaml)
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed

export PATH := $(BIN):$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: install repro test lint bench real clean-venv

install: $(STAMP)

# npm ci + cxr.offline_plots: Vega inlined into .dvc/config's plots.html_template (offline dvc plots).
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml package.json package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error && $(BIN)/python -m cxr.offline_plots
	touch $(STAMP)

repro: $(STAMP)
	$(BIN)/dvc repro

# ruff (format and lint) before pytest, mypy (pyproject [tool.mypy]) beside it, all pinned in
# requirements-dev.txt: CI runs exactly this. pytest runs on one worker per core (pytest-xdist); the
# end-to-end pipeline repos that tests share are built by one background process meanwhile
# (tests/shared_pipelines.py). mypy runs at the lowest CPU priority, on what the tests leave idle (their
# stage processes wait on each other), and says its verdict after pytest's; either failing fails the target.
PYTEST_WORKERS ?= auto
MYPY_LOG := $(VENV)/mypy.log
test: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	@nice -n 19 $(BIN)/mypy >$(MYPY_LOG) 2>&1 & mypy=$$!; \
	  $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS); tests=$$?; \
	  wait $$mypy; typed=$$?; echo "mypy:"; cat $(MYPY_LOG); \
	  test $$tests -eq 0 && test $$typed -eq 0

lint: $(STAMP)  # fix what ruff can: formatting, import order, old syntax
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
# EXTERNAL='[name=]folder ...' external validation sets; RECIPE=cpu|gpu forces a recipe (default: gpu when
# torch sees CUDA); REAL_ARGS='-S epochs=1' adds overrides.
real: $(if $(DATA),$(STAMP))
	@test -n "$(DATA)" || { $(PYTHON) src/real.py; exit 2; }
	$(BIN)/python src/real.py --data "$(DATA)" --recipe $(or $(RECIPE),auto) \
	  $(foreach e,$(EXTERNAL),--external "$(e)") -- $(REAL_ARGS)

# The speed and memory benchmarks (BENCHMARKS in benchmarks/run_all.py, minutes on a CPU); the research
# scripts there train models for accuracy and are run by name (benchmarks/README.md).
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)

# The screenshots in docs/images (MLflow's runs, run, compare and registry pages; DVC's plots page) from this
# repository's MLflow store, after `make repro` (and `dvc repro -f -s compare`); Chromium: make system-packages.
.PHONY: screenshots
screenshots: $(STAMP)
	$(BIN)/python docs/screenshots.py --repo . --out docs/images

# The Debian packages the tests drive (needs root; .ci/run calls it): headless Chromium for
# tests/test_plots_offline.py, less, the pager `dvc exp show` opens in a terminal (tests/test_workflows.py), and
# PostgreSQL 15, the MLflow server's database in make team-up (tests/team/; Debian 12's version).
.PHONY: system-packages
system-packages:
	test -x /usr/bin/chromium -a -x /usr/bin/less -a -x /usr/lib/postgresql/15/bin/initdb || \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium less postgresql-15; }

# A team's stack on this machine, to try it and to test it (docs/team.md): PostgreSQL, an S3 store (SeaweedFS)
# and `mlflow server` with basic-auth, on free loopback ports. State, PID files and the generated credentials
# in $(TEAM_DIR) (git-ignored); team-up is idempotent, team-down ends each process by its PID.
# TEAM_USERS='alice bob' names the MLflow and S3 users it makes.
TEAM_DIR ?= $(CURDIR)/.team
.PHONY: team-up team-down
team-up: $(STAMP)
	TEAM_DIR="$(TEAM_DIR)" $(BIN)/python -m cxr.team up $(if $(TEAM_USERS),--users "$(TEAM_USERS)")

team-down:
	TEAM_DIR="$(TEAM_DIR)" $(BIN)/python -m cxr.team down
