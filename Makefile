# The two commands of the README. `.venv` installs the project with its dev tools; pyproject
# pins torch and torchvision as a matching pair.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint browser

$(BIN)/corral: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $@

.venv: $(BIN)/corral

demo: .venv
	$(BIN)/corral demo

# The browser test drives Debian's chromium; as root, install it when missing (else it skips).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	  else echo "chromium/chromedriver missing and not root: the browser test will be skipped"; fi; \
	fi

test: .venv browser
	$(BIN)/python -m pytest -q
	$(BIN)/lint-imports

lint: .venv
	$(BIN)/ruff check store api worker client commands tests
	$(BIN)/mypy
