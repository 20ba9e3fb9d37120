SHELL := /bin/bash

# The two commands a new user needs: `make demo` and `make test`.
# Everything installs into ./.venv from a fresh clone; nothing else is assumed.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat setup.cfg setup.py | cksum | cut -d' ' -f1)
TYPES   = build/typecheck

.PHONY: demo test check lint typecheck unit bench venv clean test-reliability test-soak

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,all]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/qchan demo

test: check unit

unit: $(STAMP)
	$(BIN)/python -m pytest

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check channels adapters tests benchmarks examples

# mypy needs the package as it installs (channels/ -> qchan, adapters/ ->
# qchan.adapters); a tree of symlinks gives it exactly that layout.
typecheck: $(STAMP)
	rm -rf $(TYPES) && mkdir -p $(TYPES)/qchan
	ln -s $(CURDIR)/channels/* $(TYPES)/qchan/
	ln -s $(CURDIR)/adapters $(TYPES)/qchan/adapters
	cd $(TYPES) && $(CURDIR)/$(BIN)/mypy --strict -p qchan \
	  | sed -e 's|^qchan/adapters/|adapters/|' -e 's|^qchan/|channels/|'; \
	  exit $${PIPESTATUS[0]}

# The reliability suite with its long variants (10 s network cuts), about 5 minutes.
test-reliability: $(STAMP)
	QCHAN_SLOW=1 $(BIN)/python -m pytest tests/reliability tests/test_hostile_input.py tests/test_security.py

# Steady traffic for 3 minutes with a slow consumer; fails if memory, threads or
# in-flight grow, or a message is lost.
test-soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py

# Every benchmark that can run here; writes benchmarks/results.md and results.png.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
