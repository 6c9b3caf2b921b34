# The two commands of the README: `make demo` and `make test` (CI runs `make test`). Everything else
# they need is installed into .venv on first use (a fresh machine needs Python and PostgreSQL's server
# binaries). `make test-quick`: the quick tier for the edit-run loop; `make test-long`: the
# randomized fault trials, many more of them than `make test` runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-quick test-long bench bench-smoke install ceph clean

# Ceph's RADOS Gateway, the suite's second S3 server (Debian's packages, Ceph 16.2): installed only
# when a binary is missing. Needs root (CI runs as root) or sudo rights.
CEPH_PACKAGES := ceph-mon ceph-osd radosgw ceph-common
CEPH_BINARIES := ceph ceph-mon ceph-osd radosgw radosgw-admin monmaptool
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

demo: install
	$(BIN)/projmig demo

ceph:
	@missing=0; for b in $(CEPH_BINARIES); do command -v $$b >/dev/null || missing=1; done; \
	if [ $$missing = 1 ]; then \
		echo "installing Ceph's RADOS Gateway for the tests: $(CEPH_PACKAGES)"; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(CEPH_PACKAGES); \
	fi

# Parallel workers (pytest-xdist), each with servers of its own (tests/conftest.py). The suite waits on
# servers and subprocesses a good part of the time: on 2 cores 3 workers take less than half the
# serial time, and keep both cores ~80% busy (its CPU time, ~1050 s here, is the limit). loadgroup: as
# load, but the tests of one xdist_group share a worker (tests/test_staging.py's sources and templates).
TEST_WORKERS ?= 3
PYTEST_PARALLEL := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup
# the randomized fault trials (tests/faults/test_randomized.py): `make test` runs their default
# number (20), `make test-long` this many (~7 s each)
LONG_FAULT_TRIALS ?= 120

test: install ceph
	$(PYTEST_PARALLEL)

# pure tests and tests on the session's PostgreSQL and SeaweedFS servers only (marks: tests/conftest.py)
test-quick: install
	$(PYTEST_PARALLEL) -m quick

test-long: install ceph
	PROJMIG_FAULT_TRIALS=$(LONG_FAULT_TRIALS) $(BIN)/python -m pytest tests/faults/test_randomized.py

bench: $(BIN)/.bench-installed
	$(BIN)/python -m bench all

bench-smoke: install
	$(BIN)/python -m bench smoke

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
