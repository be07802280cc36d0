"""Another tracer, or a second snapcore, on the same target."""

import os
import subprocess
import sys
import threading
import time

import pytest

import snapcore

from support.procs import assert_runs_on, task_states, wait_traced
from support.strict import need_tool


def test_second_snapcore_fails_cleanly_and_first_succeeds(spawn, tmp_path):
    t = spawn("mt", "mib=256")
    t.wait_blocked()
    first = subprocess.Popen(
        [sys.executable, "-m", "snapcore", str(t.pid), "-o", str(tmp_path / "first")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_traced(t.pid, timeout=30, proc=first)
        with pytest.raises(snapcore.AlreadyTraced) as ei:
            snapcore.snapshot(t.pid, tmp_path / "second")
        assert ei.value.tracer_pid == first.pid
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    assert first.returncode == 0, err
    assert (tmp_path / "first").exists() and not (tmp_path / "second").exists()
    assert_runs_on(t)


def test_traced_by_strace(spawn, tmp_path):
    need_tool("strace")
    t = spawn("mt")
    st = subprocess.Popen(
        ["strace", "-p", str(t.pid), "-o", os.devnull],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while task_states(t.pid)[t.pid][1] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        p = subprocess.run(
            [sys.executable, "-m", "snapcore", str(t.pid), "-o", str(tmp_path / "core")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 1
        assert f"traced by PID {st.pid} (strace)" in p.stderr and p.stderr.count("\n") == 1
    finally:
        st.terminate()
        st.wait(timeout=20)
    assert not (tmp_path / "core").exists()
    assert_runs_on(t)


def test_snapshot_of_our_child_while_another_thread_waits_for_it(spawn, tmp_path):
    """Any thread of a tracer's process can collect its tracees' ptrace stops; a
    Popen.wait() in another thread must neither see them nor lose the child."""
    t = spawn("mt")
    t.wait_blocked()
    waited = {}

    def waiter():
        waited["rc"] = t.proc.wait()

    w = threading.Thread(target=waiter, daemon=True)
    w.start()
    time.sleep(0.1)  # blocked in waitpid()
    for i in range(3):
        snapcore.snapshot(t.pid, tmp_path / f"core.{i}")
        snapcore.snapshot(t.pid, tmp_path / f"live.{i}", live=True)
    time.sleep(0.2)
    assert "rc" not in waited, f"Popen.wait() returned {waited.get('rc')} for a live child"
    assert t.proc.returncode is None
    assert_runs_on(t)
    t.proc.kill()
    w.join(10)
    assert waited.get("rc") == -9
