"""Signals sent to the target while it is frozen are all delivered afterwards.

That they were sent *while it was frozen* is proven, not hoped for:

  * the snapshot's tracer (snapcore's helper process: the target is the test's
    own child) is stopped with SIGSTOP once every thread of the target is in a
    ptrace stop, and the target is seen still frozen before and after the
    signals are sent; it is let go (SIGCONT) only then;
  * the target's own heartbeat thread (sigcount.c) records the gap around the
    freeze: the time of every send must fall inside it;
  * no handler ran before the last send: the first delivery is later.

The target counts in C, with an atomic add per delivery (a Python handler
would run once for several), and every signal must arrive exactly as often
as it was sent: standard signals once (one of each per freeze), real-time
ones as often as sent.
"""

import os
import signal
import threading
import time

import pytest

import snapcore

from support.procs import (
    assert_runs_on,
    assert_untraced,
    frozen,
    stop_process,
    tgkill,
    trials,
    wait_all_stopped,
)


def counts(t):
    reply = t.command("counts")
    assert reply.startswith("counts "), reply
    return [int(x) for x in reply.split()[1:]]


def wait_counts(t, expected, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        got = counts(t)
        if got == expected:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"signals lost or duplicated: got {got}, expected {expected}")
        time.sleep(0.01)


def gaps(t):
    """The heartbeat's gaps since the last call: [(start_ns, end_ns)]."""
    reply = t.command("gaps").split()
    assert reply[0] == "gaps", reply
    v = [int(x) for x in reply[1:]]
    return list(zip(v[0::2], v[1::2]))


def deliveries(t):
    """(handler runs, first, last) since the last call."""
    reply = t.command("deliveries").split()
    assert reply[0] == "deliveries", reply
    return tuple(int(x) for x in reply[1:])


class Background:
    """snapcore.snapshot() on a thread of the test (the API path)."""

    def __init__(self, pid, path, live=False):
        self.result = None
        self.error = None
        self.t = threading.Thread(target=self._run, args=(pid, path, live), daemon=True)
        self.t.start()

    def _run(self, pid, path, live):
        try:
            self.result = snapcore.snapshot(pid, path, force=True, live=live)
        except BaseException as exc:
            self.error = exc

    def done(self):
        return not self.t.is_alive()

    def join(self, timeout=120):
        self.t.join(timeout)
        assert not self.t.is_alive(), "snapshot did not finish"
        if self.error:
            raise self.error
        return self.result


def while_frozen(t, path, live, send, stopped_ok=False):
    """Take a snapshot; while the target is frozen, hold its tracer stopped and call
    send().  Returns (t0, t1): the CLOCK_MONOTONIC ns just before and after send(),
    or None when the freeze ended before it could be caught (live mode's is short)."""
    bg = Background(t.pid, path, live)
    tracer = None
    while not bg.done():
        tracer = frozen(t.pid)
        if tracer:
            break
    caught = None
    if tracer and stop_process(tracer):
        try:
            if frozen(t.pid) == tracer:  # stopped while the target was frozen
                t0 = time.monotonic_ns()
                send()
                t1 = time.monotonic_ns()
                assert frozen(t.pid) == tracer  # and still frozen after the last send
                caught = (t0, t1)
        finally:
            os.kill(tracer, signal.SIGCONT)
    bg.join()
    assert_untraced(t.pid, stopped_ok=stopped_ok)
    return caught


def assert_sent_while_frozen(t, window, sent):
    """The heartbeat stopped before the first send and beat again after the last; no
    handler ran before the last send; every signal arrived."""
    t0, t1 = window
    seen = []
    deadline = time.monotonic() + 5
    while True:  # the gap is logged at the heartbeat's next beat, which may come later
        seen += gaps(t)
        around = [(a, b) for a, b in seen if a < t0 and t1 < b]
        if around or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(around) == 1, (window, around)
    n, first, last = deliveries(t)
    assert n == sent and first > t1, (n, sent, first, t1)


@pytest.mark.parametrize("live", [False, True], ids=["normal", "live"])
def test_signals_sent_during_snapshots_are_all_delivered(spawn, tmp_path, live):
    t = spawn("sigcount", "96")
    main, w1, w2, _ticker = t.info["tids"]
    rt = t.info["sigrtmin"]
    plan = [(signal.SIGUSR1, None, 0), (signal.SIGUSR2, w1, 1), (signal.SIGWINCH, None, 2)]
    for k in range(4):
        for rep in range(3):
            plan.append((rt + k, (None, main, w2)[rep], 3 + k))

    def send():
        for sig, tid, _slot in plan:
            if tid is None:
                os.kill(t.pid, sig)
            else:
                tgkill(t.pid, tid, sig)

    n = trials(10, 100)
    expected = [0] * 7
    caught = attempts = 0
    gaps(t), deliveries(t)  # start counting from here
    while caught < n:
        attempts += 1
        assert attempts <= 5 * n, f"caught the freeze {caught} times in {attempts} snapshots"
        window = while_frozen(t, tmp_path / "core", live, send)
        if window is None:
            continue
        for _sig, _tid, slot in plan:
            expected[slot] += 1
        wait_counts(t, expected)
        assert_sent_while_frozen(t, window, len(plan))
        caught += 1
    assert_runs_on(t)
    print(
        f"\n{'live' if live else 'normal'}: {caught * len(plan)} signals sent while the "
        f"target was frozen ({caught} freezes caught in {attempts} snapshots), 0 lost"
    )


def test_sigstop_during_snapshot_leaves_it_stopped_and_loses_nothing(spawn, tmp_path):
    t = spawn("sigcount", "96")
    gaps(t), deliveries(t)

    def send():
        os.kill(t.pid, signal.SIGUSR1)
        os.kill(t.pid, signal.SIGSTOP)

    window = while_frozen(t, tmp_path / "core", False, send, stopped_ok=True)
    assert window is not None  # a normal snapshot of 96 MiB is frozen long enough
    wait_all_stopped(t.pid)
    os.kill(t.pid, signal.SIGCONT)
    wait_counts(t, [1, 0, 0, 0, 0, 0, 0])
    assert_sent_while_frozen(t, window, 1)
    assert_runs_on(t)
