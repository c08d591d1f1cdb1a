# The two commands of the README. `.venv` installs the project with its dev tools; pyproject
# pins torch and torchvision as a matching pair.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint

$(BIN)/corral: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $@

.venv: $(BIN)/corral

demo: .venv
	$(BIN)/corral demo

test: .venv
	$(BIN)/python -m pytest -q
	$(BIN)/lint-imports

lint: .venv
	$(BIN)/ruff check store api worker tests
	$(BIN)/mypy
