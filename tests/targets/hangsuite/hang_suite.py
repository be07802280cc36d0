"""A test suite with a hung test, run by tests/tools/test_pytest_plugin.py.

Copied into a temporary directory as test_hang_suite.py and run there with
--snapcore-timeout.  test_hangs starts a Python child that sleeps forever and
waits for it; the child's pid goes to $SNAPCORE_SUITE_PIDFILE.
"""

import os
import subprocess
import sys
import time

CHILD = """
import time
HELD = bytes(range(256)) * 32768  # 8 MiB of data: more than test_options.py's --max-size
def child_hangs_here():
    while True:
        time.sleep(100)
child_hangs_here()
"""


def parent_waits_here(proc):
    proc.wait()


def test_hangs():
    proc = subprocess.Popen([sys.executable, "-c", CHILD])
    with open(os.environ["SNAPCORE_SUITE_PIDFILE"], "w") as f:
        f.write(str(proc.pid))
    parent_waits_here(proc)


def test_healthy():
    time.sleep(0.1)


def test_child_was_ended():
    """Runs after test_hangs (same file, same worker): its child must be gone."""
    with open(os.environ["SNAPCORE_SUITE_PIDFILE"]) as f:
        pid = int(f.read())
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return
    assert state == "Z", f"the hung test's child {pid} is still there (state {state})"
