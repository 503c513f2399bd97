# Two commands matter: `make run` (a working portal on a bare machine) and `make test`.
# Everything runs from the project's own .venv, built from the pinned requirements.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Rebuilt whenever a requirements file changes; the venv itself is kept.
VENV_STAMP := $(VENV)/.requirements.stamp
HOST ?= 127.0.0.1
PORT ?= 8000
N ?= 100
ARGS ?=
PYTEST_ARGS ?=

.PHONY: help venv run migrate redis redis-stop admin test lint format bench bench-ml \
	bench-pipeline train evaluate loso clean backup restore

help:
	@echo "make run       set up .venv, migrate, start Redis if needed, create an admin,"
	@echo "               serve the portal on http://$(HOST):$(PORT)/ with one worker (Ctrl-C stops)"
	@echo "make test      run the whole test suite"
	@echo "make lint      ruff check and format check, import contracts (.importlinter)"
	@echo "make bench     ml throughput, then portal -> Redis -> worker throughput (N=$(N))"
	@echo "make train     python -m ml train \$$ARGS;  make evaluate / make loso: python -m ml evaluate / loso \$$ARGS"
	@echo "make redis-stop  stop a Redis that make run started"
	@echo "make backup BACKUP_DIR=DIR   database (pg_dump) + stored files (local or S3) into DIR"
	@echo "make restore BACKUP_DIR=DIR  into an empty database and storage, checksums checked"

venv: $(VENV_STAMP)

# python-ldap compiles against OpenLDAP: without its headers the portal still runs, with
# local accounts only (directory login needs it); in CI a failed build stops the run.
$(VENV_STAMP): requirements.txt requirements-dev.txt requirements-ldap.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --disable-pip-version-check -r requirements-ldap.txt || { \
	  echo "python-ldap did not build: directory login (LDAP_SERVER_URI) is unavailable." >&2; \
	  echo "Install libldap2-dev libsasl2-dev (Debian), then .venv/bin/pip install -r requirements-ldap.txt" >&2; \
	  test "$$CI" != true; }
	touch $@

# The embedded development defaults: DEBUG on; with no DATABASE_URL or STORAGE_BACKEND
# set, the settings use SQLite and media files under var/.
run migrate redis admin bench-pipeline: export DEBUG ?= 1

var/media:
	mkdir -p $@

migrate: venv | var/media
	$(PY) manage.py migrate --noinput
	$(PY) manage.py register_shipped_model

redis: venv | var/media
	$(PY) scripts/ensure_redis.py

redis-stop:
	$(PY) scripts/ensure_redis.py --stop

admin: migrate
	$(PY) scripts/ensure_admin.py

run: migrate redis admin
	$(PY) scripts/run_dev.py --host $(HOST) --port $(PORT)

BACKUP_DIR ?= var/backups/$(shell date -u +%Y%m%dT%H%M%SZ)

backup: venv
	$(PY) scripts/backup.py backup --to $(BACKUP_DIR)

restore: venv
	@test -n "$(filter command line environment,$(origin BACKUP_DIR))" || \
	  { echo "name the backup: make restore BACKUP_DIR=var/backups/..." >&2; exit 2; }
	$(PY) scripts/backup.py restore --from $(BACKUP_DIR)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: bench-ml bench-pipeline

bench-ml: venv
	$(PY) -m bench ml $(ARGS)

bench-pipeline: migrate redis
	$(PY) -m bench pipeline --n $(N)

train: venv
	$(PY) -m ml train $(ARGS)

evaluate: venv
	$(PY) -m ml evaluate $(ARGS)

loso: venv
	$(PY) -m ml loso $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# --- Reliability and security (issue 5) ---------------------------------------------------
# make faults: every fault test, the long ones too (PostgreSQL restarts in a private
# cluster); make fuzz: the decoding fuzz tests for longer (FUZZ_PROFILE=fuzz-long);
# make bench-load: queue ANALYSES analyses over STUDIES studies with WORKERS workers.
ANALYSES ?= 2000
STUDIES ?= 10000
WORKERS ?= 1
FUZZ_PROFILE ?= fuzz-long
.PHONY: faults fuzz bench-load
bench-load: export DEBUG ?= 1

faults: venv
	RUN_LONG_FAULTS=1 $(PY) -m pytest tests/faults -ra $(PYTEST_ARGS)

fuzz: venv
	HYPOTHESIS_PROFILE=$(FUZZ_PROFILE) $(PY) -m pytest tests/hostile/test_fuzz.py -ra $(PYTEST_ARGS)

bench-load: migrate redis
	$(PY) -m bench load --analyses $(ANALYSES) --studies $(STUDIES) --workers $(WORKERS) $(ARGS)

# --- DICOM (issue 12) ------------------------------------------------------------------
# make bench-dicom: N ultrasound instances sent by storescu to a real dicom_listener.
DICOM_N ?= 100
.PHONY: bench-dicom
bench-dicom: export DEBUG ?= 1

bench-dicom: migrate redis
	$(PY) -m bench dicom --n $(DICOM_N) $(ARGS)

# make bench-pages: every page's p50/p95 at STUDIES studies of SCANS scans, in a throwaway
# database of the configured kind (SQLite by default; DATABASE_URL for PostgreSQL).
SCANS ?= 20
.PHONY: bench-pages
bench-pages: export DEBUG ?= 1
bench-pages: migrate
	$(PY) -m bench pages --studies $(STUDIES) --scans $(SCANS) $(ARGS)
