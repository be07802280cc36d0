import fcntl
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import STRICT, TARGETS, Target, target_path  # noqa: E402


def _build_targets():
    """Build tests/targets once per machine state; safe under pytest-xdist."""
    os.makedirs(os.path.join(TARGETS, "bin"), exist_ok=True)
    with open(os.path.join(TARGETS, "bin", ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(
            ["make", "-s", "-C", TARGETS], check=True, timeout=300, stdout=subprocess.DEVNULL
        )


def pytest_sessionstart(session):
    _build_targets()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under SNAPCORE_REQUIRE_ORACLES=1 a skipped test is a failed one: a skip there means
    an oracle, tool or kernel feature the run was supposed to have is missing."""
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, and SNAPCORE_REQUIRE_ORACLES=1 forbids skips: {reason}"


def pytest_report_header(config):
    if STRICT:
        return "SNAPCORE_REQUIRE_ORACLES=1: a missing reader, tool or interpreter fails"


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


def _raised_sysctl(name, wanted, why):
    """Context for a test that needs /proc/sys/NAME >= wanted: raise it as root, restore after."""
    path = "/proc/sys/" + name.replace(".", "/")
    with open(path) as f:
        old = int(f.read())
    if old >= wanted:
        yield old
        return
    if os.geteuid() != 0:
        pytest.skip(f"{name} is {old}; {why} needs {wanted}, and only root may raise it")
    try:
        with open(path, "w") as f:
            f.write(str(wanted))
        with open(path) as f:
            got = int(f.read())
        yield got
    finally:
        with open(path, "w") as f:
            f.write(str(old))


@pytest.fixture
def many_maps_allowed():
    """vm.max_map_count high enough for a target with more than 65535 mappings."""
    yield from _raised_sysctl("vm.max_map_count", 200000, "a PN_XNUM target")


@pytest.fixture
def hugepages():
    """Two 2 MiB hugetlb pages reserved for the test (0 if the kernel would not give them).

    Request it before ``spawn`` so the targets die before the reservation goes back.
    """
    try:
        gen = _raised_sysctl("vm.nr_hugepages", 2, "a hugetlb mapping")
        got = next(gen)
    except FileNotFoundError:
        pytest.skip("this kernel has no hugetlb support (/proc/sys/vm/nr_hugepages)")
    try:
        yield got
    finally:
        gen.close()
