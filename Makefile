# The README's two commands are `make demo` and `make test`; both build the environment first (idempotent).
PY := .venv/bin/python

.PHONY: setup demo test test-unit lint
setup:
	bash scripts/setup.sh

demo: setup
	$(PY) -m openrlhf_psr.cli.main demo

test: setup
	$(PY) -m pytest

test-unit: setup
	$(PY) -m pytest -m unit

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
