# The two commands of the README: `make dev` runs the platform, `make test` checks everything.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := api workflows activities worker controlplane

.PHONY: dev test lint bootstrap clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

bootstrap: $(VENV)/.installed

dev: bootstrap
	$(BIN)/controlplane dev $(ARGS)

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict $(PACKAGES) tests bench

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .controlplane
