# callops — see README.md. Everything runs from .venv, built from requirements.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.requirements-installed
PYTEST_ARGS ?=

.PHONY: help run test lint bench venv clean

help:
	@echo "make run    - set up and start web, worker, beat (+ a private Redis when REDIS_URL is unset)"
	@echo "make test   - set up and run the test suite (PYTEST_ARGS='-m smoke' for a subset)"
	@echo "make lint   - ruff (lint + format check), mypy on the pure cores, migrations check"
	@echo "make bench  - run every benchmark under bench/ and print their tables"

$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "callops needs Python 3.11+")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

venv: $(STAMP)

run: venv
	$(BIN)/python -m callops.devstack run

test: venv
	$(BIN)/python -m callops.devstack exec -- $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	DEBUG=1 $(BIN)/python manage.py makemigrations --check --dry-run

BENCH_STAMP := $(VENV)/.bench-requirements-installed
$(BENCH_STAMP): bench/requirements.txt $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	@touch $@

bench: $(BENCH_STAMP)
	@set -e; for script in $(wildcard bench/*.py); do \
		echo "== $$script"; \
		$(BIN)/python -m callops.devstack exec -- $(BIN)/python $$script; \
	done

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
