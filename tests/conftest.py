import fcntl
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import TARGETS, Target, target_path  # noqa: E402


def _build_targets():
    """Build tests/targets once per machine state; safe under pytest-xdist."""
    os.makedirs(os.path.join(TARGETS, "bin"), exist_ok=True)
    with open(os.path.join(TARGETS, "bin", ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["make", "-s", "-C", TARGETS], check=True, timeout=300,
                       stdout=subprocess.DEVNULL)


def pytest_sessionstart(session):
    _build_targets()


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
    t.wait_blocked()            # main thread back in read(), not mid-reply
    return t
