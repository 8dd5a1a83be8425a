# One venv per checkout; rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## The embedded default: a local Ray, a demo archive of phantoms, its shards and previews (runs/demo).
demo: $(STAMP)
	$(BIN)/strokeray pipeline

## The whole suite, real-data tests included (they read ../shared/data).
test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf runs .pytest_cache
