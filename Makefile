# One venv per checkout; rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install browser pacs demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## The embedded default: a demo archive of phantoms through every stage with a local Ray (runs/demo).
demo: $(STAMP)
	$(BIN)/strokeray pipeline

## Debian's Chromium and ChromeDriver for the report's browser test (root or sudo; skipped when present).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  ( $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver ) \
	    || echo "warning: chromium could not be installed; the browser test skips (and fails under CI)"; \
	fi

## Debian's Orthanc and its DICOMweb plugin: the real PACS the DICOMweb tests start on 127.0.0.1 (root or sudo;
## skipped when present; the tests never use the system service, each starts its own server).
pacs:
	@if [ ! -x /usr/sbin/Orthanc ] || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  ( $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb ) \
	    || echo "warning: orthanc could not be installed; the PACS tests skip (and fail under CI)"; \
	fi

## The whole suite, real-data tests included (they read ../shared/data).
test: $(STAMP) browser pacs
	$(BIN)/python -m pytest

## ruff (lint and format check) on the code and tests, mypy on the package; .ci/run runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check strokeray tests jobs
	$(BIN)/ruff format --check strokeray tests jobs
	$(BIN)/mypy strokeray

clean:
	rm -rf runs .pytest_cache
