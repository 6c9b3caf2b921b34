# The two commands of the README: `make demo` and `make test`. Everything else they need is
# installed into .venv on first use (a fresh machine needs Python and PostgreSQL's server binaries).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench bench-smoke install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/projmig demo

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench all

bench-smoke: install
	$(BIN)/python -m bench smoke

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
