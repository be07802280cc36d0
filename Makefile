# snapcore
#   make demo    build, snapshot a bundled multi-threaded target, show gdb's backtraces
#   make test    install test tools (apt) and a venv (pip), run the whole suite in parallel,
#                strict: a missing oracle (tool, root, -m32, kernel setting) fails the run
#   make lint    ruff check and ruff format --check
#   make bench   snapcore against gcore on large targets (ratios, same run)
#   make soak    the reliability suite with hundreds of trials
#   make mutants deliberate faults (tests/mutants.py), each must fail the fidelity tests

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS  ?=
STAMP       := $(VENV)/.snapcore-installed

.PHONY: all build deps test unit lint demo bench soak mutants clean

all: build

$(STAMP): setup.py pyproject.toml csrc/snapcore.c csrc/snapcore.h csrc/build_shim.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

build: $(STAMP)
	$(MAKE) -s -C tests/targets

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

bench: deps build
	$(PY) tests/bench/bench.py $(BENCH_ARGS)

soak: deps build
	SNAPCORE_SOAK=1 $(PY) -m pytest -n auto -rP tests/reliability

# one line per mutant: killed by <test>, or SURVIVED (then the exit status is 1)
mutants: deps build
	$(PY) tests/mutants.py $(MUTANTS)

clean:
	rm -rf build $(VENV) snapcore/_shim*.so *.egg-info demo-out
	$(MAKE) -s -C tests/targets clean
	$(MAKE) -s -C tests/bench clean
