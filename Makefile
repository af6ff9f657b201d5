# Everything installs into .venv; nothing depends on what is installed by hand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo phone chromium redis cluster test lint typecheck pytest faults bench pipecat-env bench-pipecat clean

# The C parts (gateway/media/csrc/*, gateway/pipeline/_vadstep.c) are compiled by pip install;
# it needs a C compiler (Debian's gcc when missing) and Python's headers.
$(STAMP): pyproject.toml setup.py $(wildcard gateway/media/csrc/*.[ch]) gateway/pipeline/_vadstep.c
	@command -v cc >/dev/null 2>&1 || { $(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y gcc libc6-dev; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Place a simulated WhatsApp call to the gateway and print its timeline.
demo: $(STAMP)
	$(BIN)/gateway sandbox

## Serve the browser phone on http://127.0.0.1:8765/phone (Ctrl-C stops).
phone: $(STAMP)
	$(BIN)/gateway sandbox --serve

## Debian's Chromium for the browser-phone tests (never a driver's own browser download).
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium; }

## Debian's redis-server for cluster mode and its tests (each test starts its own).
redis:
	@command -v redis-server >/dev/null 2>&1 || { $(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y redis-server; }

## A local cluster on the sandbox: a private Redis, 2 workers on one port, a few
## simulated calls through it; then it serves until Ctrl-C.
cluster: $(STAMP) redis
	$(BIN)/gateway cluster --workers 2 --sandbox

lint: $(STAMP)
	$(BIN)/ruff check gateway bots tests benchmarks
	$(BIN)/ruff format --check gateway bots tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy gateway bots

# REQUIRE_CHROMIUM: a missing browser fails the run instead of skipping its tests.
pytest: $(STAMP) chromium redis
	REQUIRE_CHROMIUM=1 $(BIN)/pytest -q

test: lint typecheck pytest

## The long fault and soak suite (tests marked slow).
faults: $(STAMP) chromium redis
	$(BIN)/pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/cpu_per_call.py

## Pipecat 1.14, the yardstick of the CPU benchmark (cpu_per_call.py --pipecat), in a
## virtualenv of its own from pinned requirements: the gateway's .venv is left alone.
PIPECAT_VENV := .venv-pipecat
PIPECAT_STAMP := $(PIPECAT_VENV)/.installed
$(PIPECAT_STAMP): benchmarks/pipecat/requirements.txt
	test -x $(PIPECAT_VENV)/bin/python || $(PY) -m venv $(PIPECAT_VENV)
	$(PIPECAT_VENV)/bin/pip install -q --upgrade pip
	$(PIPECAT_VENV)/bin/pip install -q -r benchmarks/pipecat/requirements.txt
	touch $(PIPECAT_STAMP)

pipecat-env: $(PIPECAT_STAMP)

## The gateway, Pipecat's WhatsApp transport and a stock aiortc echo under the same load.
bench-pipecat: $(STAMP) $(PIPECAT_STAMP)
	$(BIN)/python benchmarks/cpu_per_call.py --pipecat --calls 2 3 5 --duration 30

clean:
	rm -rf $(VENV) $(PIPECAT_VENV) .mypy_cache .pytest_cache .ruff_cache build gateway/media/_rtp.*.so gateway/pipeline/_vadstep.*.so
