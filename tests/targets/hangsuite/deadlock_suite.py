"""A test whose two threads deadlock on two RLocks, run by test_pytest_plugin.py.

Copied as test_deadlock_suite.py; with -n 2 beside test_hang_suite.py, each hung
test's report must carry its own verdict.
"""

import threading

FIRST = threading.RLock()
SECOND = threading.RLock()
barrier = threading.Barrier(2)


def takes_first_then_second():
    with FIRST:
        barrier.wait()
        with SECOND:
            pass


def takes_second_then_first():
    with SECOND:
        barrier.wait()
        with FIRST:
            pass


def test_deadlocks():
    threads = [
        threading.Thread(target=f, daemon=True)
        for f in (takes_first_then_second, takes_second_then_first)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
