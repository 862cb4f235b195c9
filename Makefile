# spanprism — developer entry points. `make demo` and `make test` work on a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# OpenLIT pins anthropic<1 and openai<3: its capture tests run their children in a venv of their own.
OPENLIT_VENV ?= .venv-openlit
OPENLIT_REQS := tests/instrumented/openlit-requirements.txt
OPENLIT_STAMP := $(OPENLIT_VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml setup.py ingest/_otlp_native.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

$(OPENLIT_STAMP): $(OPENLIT_REQS)
	$(PY) -m venv $(OPENLIT_VENV)
	$(OPENLIT_VENV)/bin/pip install -q --upgrade pip
	$(OPENLIT_VENV)/bin/pip install -q -r $(OPENLIT_REQS)
	touch $(OPENLIT_STAMP)

install: $(STAMP) $(OPENLIT_STAMP)

demo: $(STAMP)
	$(BIN)/spanprism demo

test: $(STAMP) $(OPENLIT_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf $(VENV) $(OPENLIT_VENV) spanprism.duckdb build *.egg-info
