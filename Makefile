# Everything installs into .venv; nothing depends on what is installed by hand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Place a simulated WhatsApp call to the gateway and print its timeline.
demo: $(STAMP)
	$(BIN)/gateway sandbox

lint: $(STAMP)
	$(BIN)/ruff check gateway bots tests benchmarks
	$(BIN)/ruff format --check gateway bots tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy gateway bots

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/cpu_per_call.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
