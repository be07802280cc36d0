"""A test stuck in C code (no Python signal handler can run), and a healthy one.

Copied as test_c_hang_suite.py by tests/tools/test_pytest_plugin.py.
"""

import ctypes
import os
import subprocess
import sys

CHILD = "import time\ndef child_of_the_c_hang():\n    time.sleep(300)\nchild_of_the_c_hang()\n"


def deadlock_in_c():
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # a PTHREAD_MUTEX_NORMAL, all zeros
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)  # futex wait: restarted after signals


def test_c_hang():
    proc = subprocess.Popen([sys.executable, "-c", CHILD])
    with open(os.environ["SNAPCORE_SUITE_PIDFILE"], "w") as f:
        f.write(str(proc.pid))
    deadlock_in_c()


def test_fine():
    pass
