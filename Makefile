SHELL := /bin/bash

# The two commands a new user needs: `make demo` and `make test`.
# Everything installs into ./.venv from a fresh clone; nothing else is assumed.
# `make demo` installs qchan alone; `make test` (and every other target) adds the extras
# and the development tools.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The install is an editable one in setuptools' strict mode: a tree of links to
# channels/ and adapters/ laid out as the package installs (qchan/, qchan/adapters/),
# which mypy, pyright and IDEs follow like any installed package (the default
# editable mode uses an import hook that static tools cannot see). An edit shows at
# once; a new or removed module needs a reinstall, so the stamp covers the file list.
SOURCES = $(shell find channels adapters -name '*.py' -o -name py.typed | sort | cksum | cut -d' ' -f1)
HASH    = $(shell cat setup.cfg setup.py | cksum | cut -d' ' -f1)-$(SOURCES)
STAMP   = $(VENV)/.installed-$(HASH)
# `make demo` needs only the core (attrs, cattrs: about 25 MB, against about 670 MB with
# every extra and the dev tools), installed plainly (an editable install makes setuptools
# print a notice a new user need not read); its own stamp, so a later `make test`
# upgrades the same venv to the editable one, and a venv that already has everything is
# left as it is.
CORE_STAMP = $(VENV)/.core-$(HASH)
CODE    = channels adapters tests benchmarks examples
# `make bench` adds the peers it measures qchan against (kombu, faststream: the
# `bench` extra), kept out of `make test`'s venv; its own stamp, redone with setup.cfg.
BENCH_STAMP = $(VENV)/.bench-$(HASH)

.PHONY: demo test check lint format typecheck unit bench venv clean test-reliability test-soak

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,all]' --config-settings editable_mode=strict
	rm -f $(VENV)/.installed-*
	touch $@

$(CORE_STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -e $(STAMP) || $(BIN)/python -m pip install --quiet --upgrade pip
	test -e $(STAMP) || $(BIN)/python -m pip install --quiet .
	rm -f $(VENV)/.core-*
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,all,bench]' --config-settings editable_mode=strict
	rm -f $(VENV)/.bench-*
	touch $@

venv: $(STAMP)

demo: $(CORE_STAMP)
	$(BIN)/qchan demo

test: check unit

# Two workers (pytest-xdist): most tests wait on brokers, not the CPU. The tests that
# restart the shared RabbitMQ (marked `serial`) run alone afterwards.
unit: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not serial"
	$(BIN)/python -m pytest -m serial

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

format: $(STAMP)
	$(BIN)/ruff check --fix $(CODE)
	$(BIN)/ruff format $(CODE)

# mypy finds qchan where the install put it, as a user's mypy does (setup.cfg's
# [mypy]); sed only shortens the paths it prints back to the source folders.
typecheck: $(STAMP)
	$(BIN)/mypy -p qchan | sed -e 's|^build/__editable__[^/]*/qchan/adapters/|adapters/|' \
	  -e 's|^build/__editable__[^/]*/qchan/|channels/|'; exit $${PIPESTATUS[0]}

# The reliability suite with its long variants (10 s network cuts, SQS's 2 s cut, the
# operator commands on Kafka), about 6 minutes.
test-reliability: $(STAMP)
	QCHAN_SLOW=1 $(BIN)/python -m pytest tests/reliability tests/security/test_hostile_input.py tests/security/test_security.py \
	  tests/cli/test_operate.py

# Steady traffic for 3 minutes with a slow consumer; fails if memory, threads or
# in-flight grow, or a message is lost.
test-soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py

# Every benchmark that can run here; writes benchmarks/results.md and results.png.
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
