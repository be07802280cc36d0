"""Signals sent to the target while it is frozen are all delivered afterwards."""

import ctypes
import os
import signal
import threading
import time

import pytest

import snapcore

from support.procs import (
    assert_runs_on,
    assert_untraced,
    tracer_of,
    trials,
    wait_all_stopped,
    wait_traced,
)

_libc = ctypes.CDLL(None, use_errno=True)
SYS_tgkill = 234


def tgkill(tgid, tid, sig):
    if _libc.syscall(SYS_tgkill, tgid, tid, sig) != 0:
        raise OSError(ctypes.get_errno(), "tgkill")


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

    def join(self, timeout=120):
        self.t.join(timeout)
        assert not self.t.is_alive(), "snapshot did not finish"
        if self.error:
            raise self.error
        return self.result


@pytest.mark.parametrize("live", [False, True], ids=["normal", "live"])
def test_signals_sent_during_snapshots_are_all_delivered(spawn, tmp_path, live):
    t = spawn("sigcount", "96")
    main, w1, w2, _ticker = t.info["tids"]
    rt = t.info["sigrtmin"]
    n = trials(10, 100)
    expected = [0] * 7
    sent = during = 0
    for _i in range(n):
        bg = Background(t.pid, tmp_path / "core", live)
        traced = wait_traced(t.pid, timeout=30)
        assert traced or live  # a live freeze can be too short to observe
        plan = [(signal.SIGUSR1, None, 0), (signal.SIGUSR2, w1, 1), (signal.SIGWINCH, None, 2)]
        for k in range(4):
            for rep in range(3):
                plan.append((rt + k, (None, main, w2)[rep], 3 + k))
        for sig, tid, slot in plan:
            traced = tracer_of(t.pid) != 0
            if tid is None:
                os.kill(t.pid, sig)
            else:
                tgkill(t.pid, tid, sig)
            expected[slot] += 1
            sent += 1
            during += traced
        bg.join()
        assert_untraced(t.pid)
        wait_counts(t, expected)
    assert_runs_on(t)
    print(
        f"\n{'live' if live else 'normal'}: {sent} signals sent ({during} while the "
        f"target was frozen), 0 lost"
    )
    if not live:
        assert during >= sent // 4, "signals did not land inside snapshots"


def test_sigstop_during_snapshot_leaves_it_stopped_and_loses_nothing(spawn, tmp_path):
    t = spawn("sigcount", "96")
    bg = Background(t.pid, tmp_path / "core")
    assert wait_traced(t.pid, timeout=30)
    os.kill(t.pid, signal.SIGUSR1)
    os.kill(t.pid, signal.SIGSTOP)
    bg.join()
    wait_all_stopped(t.pid)
    os.kill(t.pid, signal.SIGCONT)
    wait_counts(t, [1, 0, 0, 0, 0, 0, 0])
    assert_runs_on(t)
