# The common verbs. `make demo` and `make test` work on a fresh machine with Python >= 3.11.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test test-fast reliability lint typecheck check bench app clean lock

# Exactly the locked versions, each checked against its sha256 (requirements-dev.lock,
# generated from pyproject.toml by `make lock`), then the package itself without
# dependencies, installed by uv: the one on PATH, else uv itself installed with pip into the
# venv first from requirements-bootstrap.lock (hash-checked too; seconds, against a minute
# for pip to install everything). USE_PIP=1 installs everything with pip instead (a pip
# index uv does not read). Bytecode is compiled at install, as pip does by default and the
# image does: otherwise, where PYTHONDONTWRITEBYTECODE is set, every CLI run compiles Great
# Expectations and Prefect again.
UV ?= $(shell command -v uv 2>/dev/null)

$(BIN)/segmentation: pyproject.toml requirements-dev.lock requirements-bootstrap.lock
ifneq ($(UV),)
	$(UV) venv --quiet --allow-existing --seed --python $(PYTHON) $(VENV)
	VIRTUAL_ENV=$(abspath $(VENV)) $(UV) pip install --quiet --compile-bytecode --require-hashes -r requirements-dev.lock
	VIRTUAL_ENV=$(abspath $(VENV)) $(UV) pip install --quiet --no-deps -e .
else ifeq ($(USE_PIP),1)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
else
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-bootstrap.lock
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/uv pip install --quiet --compile-bytecode --require-hashes -r requirements-dev.lock
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/uv pip install --quiet --no-deps -e .
endif
	@touch $@

install: $(BIN)/segmentation           ## create .venv and install the package + dev tools

demo: install                          ## synthetic data -> migrate -> ingest -> train -> score
	$(BIN)/segmentation demo

test: install                          ## the whole suite on real PostgreSQL
	$(BIN)/python -m pytest

test-fast: install                     ## skip the slow end-to-end tests
	$(BIN)/python -m pytest -m "not slow"

reliability: install                   ## the fault and abuse suite alone
	$(BIN)/python -m pytest -m reliability

lint: install
	$(BIN)/ruff check segmentation flows streamlit_app tests benchmarks

typecheck: install
	$(BIN)/mypy

check: lint typecheck test             ## everything CI runs

bench: install                         ## 1M rows: ingest, validation, scoring, app lookup
	$(BIN)/python benchmarks/bench_ingest.py --rows 1000000
	$(BIN)/python benchmarks/bench_validation.py
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_app.py
	$(BIN)/python benchmarks/bench_rename.py --rows 1000000

app: install
	$(BIN)/segmentation app

lock: install                          ## re-resolve the lock files after editing pyproject.toml
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-bootstrap.lock
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 --generate-hashes -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes \
		-o requirements-dev.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
