"""The one way a test may give up for lack of an oracle: ``missing(reason)``.

An oracle is whatever a test compares snapcore against or needs to set up the
comparison: a tool (gdb, lldb, eu-stack, pystack, drgn, zstd, strace), a
32-bit build of a target, root, a kernel setting (``core_pattern``, hugetlb
pages).  Without one, a test skips, saying which and why; under strict mode
(``SNAPCORE_REQUIRE_ORACLES=1``, which ``make test`` and CI set) it fails
instead, so that a green run means every oracle ran.  conftest.py turns any
other skip into a failure too under strict mode, and
tests/unit/test_strict.py keeps every ``pytest.skip`` of the suite inside
this module.
"""

import importlib
import os
import shutil

import pytest

STRICT = os.environ.get("SNAPCORE_REQUIRE_ORACLES") == "1"
MARK = "oracle missing: "


def missing(reason):
    """Skip this test, or fail it under strict mode: the oracle it needs is absent."""
    if STRICT:
        pytest.fail(f"{MARK}{reason} (SNAPCORE_REQUIRE_ORACLES=1)", pytrace=False)
    pytest.skip(f"{MARK}{reason}")


def need(condition, reason):
    """missing(reason) unless condition holds."""
    if not condition:
        missing(reason)


def need_tool(name, package=None):
    need(
        shutil.which(name) is not None,
        f"{name} is not installed (apt-get install {package or name}; .ci/deps does)",
    )


def need_module(name):
    """Import and return a Python module the test needs (pytest.importorskip, strict)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"Python module {name} cannot be imported ({exc}); pip install '.[test]'")


def need_root(why):
    need(os.geteuid() == 0, f"not root: {why} needs root")
