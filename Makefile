# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# checkov (the Terraform scan) has its own tool venv: its pins clash with the project's.
CHECKOV_VENV := $(VENV)/tools/checkov
# ome-zarr-models (the third-party OME-Zarr validator of tests/test_derived.py) pins an
# older pydantic than the project's, so it has its own tool venv too.
OME_VENV := $(VENV)/tools/ome-zarr

.PHONY: demo test lint bench bench-large fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.demo-installed

## demo: an end-to-end run on the embedded defaults (SQLite, local backend, local store)
demo: $(VENV)/.demo-installed
	$(BIN)/insitu demo

## lint: ruff and mypy
lint: $(VENV)/.test-installed
	$(BIN)/ruff check platform tests examples
	$(BIN)/ruff format --check platform tests examples
	$(BIN)/mypy

$(CHECKOV_VENV)/bin/checkov: | $(BIN)/python
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov==3.3.30'

$(OME_VENV)/.installed: | $(BIN)/python
	$(PYTHON) -m venv $(OME_VENV)
	$(OME_VENV)/bin/pip install --quiet 'ome-zarr-models==1.7'
	touch $@

## test: lint, type-check and the test suite
test: lint $(CHECKOV_VENV)/bin/checkov $(OME_VENV)/.installed
	$(BIN)/pytest

## bench: every benchmark (about 25 min; root for the network namespaces); writes docs/benchmarks.*
bench: $(VENV)/.test-installed
	$(BIN)/python tests/benchmarks/run_all.py

## bench-large: the users' scale, run once and recorded: a 52 GB 2p session and a 107 GB EM
## volume in a local SeaweedFS kept under .bench/large (about 40 GB of disk; the data is
## written once, in about 20 min, then reused); writes docs/benchmarks-large.png and the key
## `large` of docs/benchmarks.json
bench-large: $(VENV)/.test-installed
	$(BIN)/python tests/benchmarks/bench_large.py --record

## fuzz: the API fuzzer with a long budget (every route and role, SQLite and PostgreSQL); figures in .bench/fuzz.json
FUZZ_EXAMPLES ?= 300
fuzz: $(VENV)/.test-installed
	rm -f .bench/fuzz.json
	INSITU_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) INSITU_FUZZ_REPORT=.bench/fuzz.json \
		$(BIN)/pytest tests/test_fuzz_api.py -s -q --no-header --tb=no --timeout=0

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .bench
