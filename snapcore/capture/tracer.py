"""The tracer thread: one OS thread makes every ptrace call of a snapshot.

A tracee is bound to the thread that attached it, and when that thread ends
the kernel detaches whatever it still traces: so a snapshot's ptrace work
runs on a fresh thread (``run_traced``), and whatever way it ends, the
target is let go.  The calling thread waits, turns Ctrl-C (or a signal
handler's exception) into a cancel request (``CancelToken``) and waits on for
the cleanup.
"""

import collections
import contextlib
import os
import threading
import time

# the threads of this process busy taking a snapshot (native ids, counted: a
# thread may be in more than one), so that a snapshot of this very process
# (self, tree, `snapcore run`, the pytest plugin) can say which of its threads
# are snapcore's and not part of what the user is looking at
_busy = collections.Counter()
_busy_lock = threading.Lock()


@contextlib.contextmanager
def snapcore_thread():
    """Marks the calling thread as busy taking a snapshot while the block runs."""
    tid = threading.get_native_id()
    with _busy_lock:
        _busy[tid] += 1
    try:
        yield
    finally:
        with _busy_lock:
            _busy[tid] -= 1
            if not _busy[tid]:
                del _busy[tid]


def snapcore_threads():
    """Native ids of this process's threads busy taking a snapshot now."""
    with _busy_lock:
        return sorted(_busy)


class CancelToken(threading.Event):
    """A cancel request, forwarded to callbacks (e.g. the C copy loop's flag)."""

    def __init__(self):
        super().__init__()
        self._callbacks = []

    def on_set(self, callback):
        self._callbacks.append(callback)
        if self.is_set():
            callback()

    def set(self):
        super().set()
        for cb in list(self._callbacks):
            cb()


def run_traced(fn, cancel, poll=None, name="snapcore-tracer"):
    """Run fn() on a fresh OS thread that will make every ptrace call.

    When that thread ends, the kernel detaches anything it still traces, so no
    path out of a snapshot can leave the target attached.  The calling thread
    waits; on KeyboardInterrupt (or any BaseException, e.g. from a SIGTERM
    handler) it sets ``cancel``, waits for the tracer to resume the target and
    clean up, then re-raises.  ``poll()`` is called about ten times a second.
    """
    box = {}
    # Wait on an Event, not Thread.join(): on Python 3.11 an exception raised
    # by a signal handler inside join() can mark a running thread as stopped
    # (Thread._wait_for_tstate_lock releases the lock the thread still holds,
    # CPython gh-90882), and is_alive() then lies while the tracer still works.
    done = threading.Event()

    def body():
        try:
            with snapcore_thread():
                box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc
        finally:
            done.set()

    t = threading.Thread(target=body, name=name, daemon=True)
    with snapcore_thread():
        t.start()
        try:
            while not done.wait(0.1):
                if poll is not None:
                    poll()
        except BaseException:
            cancel.set()
            while not done.is_set():
                try:
                    done.wait(0.1)
                except BaseException:
                    cancel.set()  # a second Ctrl-C: keep waiting for cleanup
            _wait_thread_gone(t.native_id)
            raise
    _wait_thread_gone(t.native_id)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _wait_thread_gone(native_id, timeout=2.0):
    """Wait until the tracer's OS thread has exited, i.e. the kernel has
    detached anything it still traced (a thread that never reached its stop)."""
    deadline = time.monotonic() + timeout
    path = f"/proc/self/task/{native_id}"
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.001)
