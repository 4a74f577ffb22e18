# Two commands do all set-up: `make demo` and `make test`. Everything installs into .venv/.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum requirements.txt | cut -c1-12)
PORT ?= 8000
PG_URL ?= postgres://postgres@127.0.0.1:5432/test

.PHONY: install services lint test test-core test-web test-pg demo clean

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# Redis and Debian's chromium: started/installed only where missing.
services:
	bash scripts/ensure_services.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install services lint
	$(PY) -m pytest -p no:cacheprovider
	DATABASE_URL=$(PG_URL) $(PY) -m pytest -p no:cacheprovider -m "not sqlite_only" tests/web tests/agent

demo: install services
	PORT=$(PORT) $(PY) scripts/demo.py

clean:
	rm -rf $(VENV) .demo
