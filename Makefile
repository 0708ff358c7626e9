# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

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

## test: lint, type-check and the test suite
test: lint
	$(BIN)/pytest

## bench: every benchmark (about 18 min; root for the network namespaces); writes docs/benchmarks.*
bench: $(VENV)/.test-installed
	$(BIN)/python tests/benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .bench
