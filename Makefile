# fsbook: `make book` builds the published book, `make test` is what CI runs.
# Both set everything up on a fresh machine (a .venv with the pinned stack).

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fsbook-installed

# Local natural-image archives (no internet here); users online leave FSLIB_DATA unset.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)),)
export FSLIB_DATA ?= $(SHARED_DATA)
endif

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

export PYTHONHASHSEED := 0

.PHONY: install book test unit smoke html-check benchmarks clean clean-cache

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --progress-bar off -e '.[book,test]' 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	@# 20 lossless CIFAR-10 test PNGs ship in foolbox; --no-deps keeps its framework stack out
	$(PY) -m pip install --quiet --progress-bar off --no-deps foolbox==3.3.4 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(PY) -c "import torch, torchvision, jupyter_book, papermill, jupytext"
	@touch $(STAMP)

## The published book: every chapter with the default profile, strict HTML build.
book: install
	$(PY) -m fslib run --profile default
	$(PY) -m fslib build
	@echo "open _build/html/index.html"

## What CI runs: lint, unit tests and doctests, every chapter with the smoke profile, strict build, HTML checks.
test: install
	$(PY) -m ruff check fslib tests benchmarks
	$(PY) -m pytest -q -m "not html"
	$(PY) -m fslib run --profile smoke
	$(PY) -m fslib build --all --keep-going --output _build/smoke
	FSBOOK_HTML=_build/smoke/_build/html $(PY) -m pytest -q tests/test_html.py

benchmarks: install
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf _build book/executed

clean-cache:
	rm -rf data/cache
