"""The fixture hub, and what the whole session needs.

Helpers live in tests/support/ by role: targets.py (the targets and what each
is known to hold), oracles.py (the readers and the kernel's own core),
procs.py (process fixtures and health checks), coreparse.py (an independent
ELF core decoder), compare.py (core against core), strict.py (the one way to
give up for lack of an oracle) and session.py (machine-wide kernel settings).

Session: the targets are built once (safe under xdist); as root, the kernel
settings the oracles need are held for the run (support/session.py) by the
controlling process, and put back at its end; under
SNAPCORE_REQUIRE_ORACLES=1 any skip is a failure; the number of skipped tests
is printed at the end of every run.
"""

import fcntl
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from support import session  # noqa: E402
from support.strict import MARK, STRICT, missing  # noqa: E402
from support.targets import BIN, TARGETS, Target, target_path  # noqa: E402

_TAG = "pytest session"


def _build_targets():
    """Build tests/targets once per machine state; safe under pytest-xdist."""
    os.makedirs(BIN, exist_ok=True)
    with open(os.path.join(BIN, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(
            ["make", "-s", "-C", TARGETS], check=True, timeout=300, stdout=subprocess.DEVNULL
        )


def _controller(config):
    return not hasattr(config, "workerinput")  # not an xdist worker


def pytest_configure(config):
    if _controller(config):
        session.hold(session.SESSION_SETTINGS, _TAG)
        config.add_cleanup(lambda: session.release(_TAG))


def pytest_sessionstart(session):
    _build_targets()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under strict mode a skip, whatever raised it, is a failure."""
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under SNAPCORE_REQUIRE_ORACLES=1: {reason}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = terminalreporter.stats.get("skipped", [])
    oracles = sum(1 for r in skipped if MARK in str(r.longrepr))
    terminalreporter.write_line(
        f"snapcore tests: {len(skipped)} skipped ({oracles} for a missing oracle); "
        f"strict mode {'on' if STRICT else 'off'} (SNAPCORE_REQUIRE_ORACLES)"
    )


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture
def spawn(tmp_path):
    """spawn(name_or_argv, **kw) -> Target; every target is killed and reaped after the test."""
    started = []

    def _spawn(what, *args, **kw):
        argv = [target_path(what), *args] if isinstance(what, str) else list(what)
        kw.setdefault("cwd", str(tmp_path))
        t = Target(argv, **kw)
        started.append(t)
        return t

    try:
        yield _spawn
    finally:
        for t in started:
            t.close()


@pytest.fixture
def mt(spawn):
    t = spawn("mt")
    t.wait_blocked()  # main thread back in read(), not mid-reply
    return t


def _held_sysctl(name, wanted, why, least=None):
    """Context for a test that needs /proc/sys/NAME >= least (default: wanted), which
    is raised to wanted as root (the kernel may grant less, e.g. hugetlb pages)."""
    least = wanted if least is None else least
    tag = f"{name} for {os.environ.get('PYTEST_CURRENT_TEST', '?')}"
    got = session.hold({name: ("min", wanted)}, tag)[name]
    try:
        if got is None:
            missing(f"this kernel has no {name}")
        if int(got) < least:
            missing(f"{name} is {got}; {why} needs {least}, and only root may raise it")
        yield int(got)
    finally:
        session.release(tag)


@pytest.fixture
def many_maps_allowed():
    """vm.max_map_count high enough for a target with more than 65535 mappings."""
    yield from _held_sysctl("vm.max_map_count", 200000, "a PN_XNUM target")


@pytest.fixture
def hugepages():
    """Two 2 MiB hugetlb pages reserved for the test.

    Request it before ``spawn`` so the targets die before the reservation goes back.
    """
    yield from _held_sysctl("vm.nr_hugepages", 2, "a hugetlb mapping", least=1)
