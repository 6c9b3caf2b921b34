# The two commands of the README: `make demo` and `make test`. Everything else they need is
# installed into .venv on first use (a fresh machine needs Python and PostgreSQL's server binaries).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench bench-smoke install ceph clean

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

demo: install
	$(BIN)/projmig demo

ceph:
	@missing=0; for b in $(CEPH_BINARIES); do command -v $$b >/dev/null || missing=1; done; \
	if [ $$missing = 1 ]; then \
		echo "installing Ceph's RADOS Gateway for the tests: $(CEPH_PACKAGES)"; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(CEPH_PACKAGES); \
	fi

test: install ceph
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench all

bench-smoke: install
	$(BIN)/python -m bench smoke

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
