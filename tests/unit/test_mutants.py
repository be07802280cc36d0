"""The mutants of `make mutants` still describe snapcore: each applies exactly once,
and gives code that compiles (a mutant that is a syntax error proves nothing)."""

import os

import mutants

import snapcore

from support.targets import ROOT

# the package's files: the source tree's, or the installed ones (the sdist's own test
# run, .ci/check-dist, removes the tree's copy so that the installed one is tested)
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(snapcore.__file__)))


def test_every_mutant_applies_exactly_once_and_compiles():
    assert len(mutants.MUTANTS) >= 12
    assert len({m.name for m in mutants.MUTANTS}) == len(mutants.MUTANTS)
    for m in mutants.MUTANTS:
        with open(os.path.join(PACKAGE_ROOT, m.path)) as f:
            text = f.read()
        compile(mutants.apply(text, m), m.path, "exec")
        assert mutants.apply(text, m) != text


def test_each_test_a_mutant_runs_first_exists():
    for m in mutants.MUTANTS:
        for test in m.first:
            path = test.split("::")[0]
            assert os.path.exists(os.path.join(ROOT, path)), (m.name, test)
    for test in mutants.ORDER:
        assert os.path.exists(os.path.join(ROOT, test.split("::")[0])), test
