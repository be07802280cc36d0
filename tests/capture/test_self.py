"""Snapshots that include the calling process (through the helper process)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import snapcore

from support.oracles import gdb_batch, raw_notes
from support.oracles import pystack as oracle_pystack
from support.procs import assert_untraced

NT_PRPSINFO = 3

CHILD = """
import sys, time
def child_sleeps_here():
    time.sleep(300)
print("READY", flush=True)
child_sleeps_here()
"""


def pystack(core):
    p = oracle_pystack(core, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def thread_section(out, tid):
    """pystack's text for one thread."""
    start = out.index(f"Traceback for thread {tid}")
    end = out.find("Traceback for thread", start + 1)
    return out[start : end if end >= 0 else None]


def our_children():
    me = os.getpid()
    return [p for p, pp in snapcore.proctree.parent_map().items() if pp == me]


@pytest.fixture
def child():
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        yield p
    finally:
        p.kill()
        p.wait(timeout=10)
        p.stdout.close()


def snapshot_of_myself_marker(path):
    return snapcore.snapshot(os.getpid(), path)


def test_self_snapshot_shows_the_calling_thread_in_the_call(tmp_path):
    before = set(our_children())
    snap = snapshot_of_myself_marker(tmp_path / "self.core")
    assert snap.pid == os.getpid()
    me = threading.get_native_id()
    assert me in snap.tids
    assert (tmp_path / "self.core").stat().st_mode & 0o777 == 0o600
    # we run on, untraced; the helper is gone and reaped
    assert_untraced(os.getpid())
    assert set(our_children()) == before
    out = pystack(str(tmp_path / "self.core"))
    mine = thread_section(out, me)
    assert "in snapshot_of_myself_marker" in mine, out
    assert "in test_self_snapshot_shows_the_calling_thread_in_the_call" in mine
    # gdb reads it too, with every thread
    p = gdb_batch(sys.executable, str(tmp_path / "self.core"), "info threads")
    for tid in snap.tids:
        assert f"LWP {tid}" in p.stdout, p.stdout + p.stderr


def test_self_snapshot_default_path_and_existing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    snap = snapcore.snapshot(os.getpid())
    assert snap.path == f"core.{os.getpid()}" and os.path.exists(snap.path)
    with pytest.raises(snapcore.OutputExists):
        snapcore.snapshot(os.getpid())
    assert sorted(os.listdir(tmp_path)) == [f"core.{os.getpid()}"]  # no temp file left
    assert_untraced(os.getpid())


def test_self_tree_while_a_thread_waits_for_the_child(child, tmp_path):
    """A thread in Popen.wait() must not collect the child's ptrace stops."""
    box = {}

    def waiter_thread_marker():
        box["tid"] = threading.get_native_id()
        box["rc"] = child.wait()

    w = threading.Thread(target=waiter_thread_marker, daemon=True)
    w.start()
    deadline = time.monotonic() + 10
    while snapcore.procfs.blocked_syscall(os.getpid(), box.get("tid", 0) or os.getpid()) != 61:
        assert time.monotonic() < deadline, "waiter never blocked in wait4"
        time.sleep(0.005)

    result = snapcore.snapshot_tree(os.getpid(), tmp_path / "t")

    assert child.returncode is None and "rc" not in box  # nothing was stolen
    assert child.poll() is None
    assert_untraced(child.pid)
    assert_untraced(os.getpid())
    by_pid = {p.pid: p for p in result.processes}
    assert by_pid[os.getpid()].ok and by_pid[os.getpid()].is_caller
    assert by_pid[child.pid].ok, by_pid[child.pid].error
    assert set(by_pid) == {os.getpid(), child.pid}  # the helper is not in the tree
    doc = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert [p["caller"] for p in doc["processes"] if p["pid"] == os.getpid()] == [True]

    ours = pystack(str(tmp_path / "t" / f"core.{os.getpid()}"))
    assert "in waiter_thread_marker" in thread_section(ours, box["tid"])
    assert "in test_self_tree_while_a_thread_waits_for_the_child" in ours
    # our process was sleeping (in waitpid/futex), not stopped, in its NT_PRPSINFO
    prpsinfo = [
        d
        for n, t, d in raw_notes(str(tmp_path / "t" / f"core.{os.getpid()}"))
        if n == "CORE" and t == NT_PRPSINFO
    ][0]
    # (the main thread waits for the helper's reply in a futex, and wakes every 0.1 s)
    assert prpsinfo[1:2] == b"S", prpsinfo[:2]
    theirs = pystack(str(tmp_path / "t" / f"core.{child.pid}"))
    assert "in child_sleeps_here" in theirs

    child.send_signal(signal.SIGKILL)
    w.join(10)
    assert box["rc"] == -signal.SIGKILL  # the real status, not -SIGTRAP


def test_tree_of_our_child_while_a_thread_waits_for_it(child, tmp_path):
    box = {}
    w = threading.Thread(target=lambda: box.setdefault("rc", child.wait()), daemon=True)
    w.start()
    time.sleep(0.2)
    result = snapcore.snapshot_tree(child.pid, tmp_path / "t")
    assert [p.pid for p in result.ok] == [child.pid]
    assert child.poll() is None and "rc" not in box
    assert_untraced(child.pid)
    child.send_signal(signal.SIGTERM)
    w.join(10)
    assert box["rc"] == -signal.SIGTERM


def test_snapshot_of_a_child_a_thread_waits_for_does_not_time_out(child, tmp_path):
    """Our own child is traced from the helper: a thread of ours blocked in
    Popen.wait() neither delays the snapshot nor sees a ptrace stop."""
    box = {}
    w = threading.Thread(target=lambda: box.setdefault("rc", child.wait()), daemon=True)
    w.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    snap = snapcore.snapshot(child.pid, tmp_path / "c", stop_timeout=5)
    assert time.monotonic() - t0 < 3
    assert snap.tids == [child.pid]
    assert_untraced(child.pid)
    assert "rc" not in box and child.poll() is None
    os.kill(child.pid, signal.SIGKILL)
    w.join(10)
    assert box["rc"] == -signal.SIGKILL  # the real end, not a stolen -SIGTRAP


# Run by a process of its own while the test process is frozen by its helper: once
# the caller's thread is in a ptrace stop and the helper has written `at` bytes of the
# core (its /proc/PID/io wchar: a point in the dump, not a time, which a fast copy
# could outrun), stop the helper, check the caller is still frozen, send it SIGALRM,
# let the helper go.  It says "ready" once it runs (the test starts the snapshot only
# then: a dump can be over before a new interpreter has started), polls at high
# priority, and prints what it did: "sent", or "missed" if the dump was over first.
INTERRUPTER = r"""
import os, signal, sys, time
pid, tid, at = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
try:
    os.setpriority(os.PRIO_PROCESS, 0, -15)  # not starved by the other tests' work
except OSError:
    pass

def tracer():
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            text = f.read()
    except OSError:
        return 0
    state = text.split("State:")[1].split()[0]
    tr = int(text.split("TracerPid:")[1].split()[0])
    return tr if state == "t" and tr else 0

def written(helper):
    try:
        with open(f"/proc/{helper}/io") as f:
            return int(f.read().split("wchar:")[1].split()[0])
    except (OSError, IndexError):
        return None

def stopped(helper):
    try:
        with open(f"/proc/{helper}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "tTZX"
    except OSError:
        return True

print("ready", flush=True)
deadline = time.monotonic() + 60
while not (tr := tracer()):
    if time.monotonic() > deadline:
        sys.exit("never frozen")
try:
    with open(f"/proc/{tr}/status") as f:
        helper = int(f.read().split("Tgid:")[1].split()[0])
except (OSError, IndexError):
    print("missed", flush=True)  # the helper let go and exited already
    sys.exit(0)
while (n := written(helper)) is not None and n < at:
    if time.monotonic() > deadline:
        sys.exit(f"the helper wrote {n} bytes, never {at}")
try:
    os.kill(helper, signal.SIGSTOP)
except ProcessLookupError:
    print("missed", flush=True)
    sys.exit(0)
while not stopped(helper):
    time.sleep(0.0005)
try:
    if tracer():
        os.kill(pid, signal.SIGALRM)
        print("sent", flush=True)
    else:
        print("missed", flush=True)  # the dump was over already
finally:
    try:
        os.kill(helper, signal.SIGCONT)
    except ProcessLookupError:
        pass
"""


def test_interrupted_self_snapshot_leaves_nothing(tmp_path):
    """Ctrl-C during a self snapshot: no core, nothing traced, the helper reaped.

    Our threads are stopped while the helper dumps us, so the signal is handled once
    the dump is over, and the finished core must be taken back then.  The signal is
    sent by another process while we are known to be frozen (it holds the helper
    stopped meanwhile), at several points of the dump (0 to 150 MiB of the 200 MiB
    written).  Where it was sent, the one right outcome is KeyboardInterrupt out of
    snapshot() and no file; where the dump was over before it could be (the watcher
    says so), a whole core.  At the freeze itself it always lands, and at three
    points of the four at least."""
    data = os.urandom(200 << 20)  # makes the dump take a while
    before = set(our_children())

    def interrupt(signum, frame):
        raise KeyboardInterrupt()

    old = signal.signal(signal.SIGALRM, interrupt)
    me, caller = os.getpid(), threading.get_native_id()
    outcomes = []
    try:
        for i, at in enumerate((0, 50 << 20, 100 << 20, 150 << 20)):
            path = tmp_path / f"core{i}"
            watcher = subprocess.Popen(
                [sys.executable, "-c", INTERRUPTER, str(me), str(caller), str(at)],
                stdout=subprocess.PIPE,
                text=True,
            )
            interrupted = False
            try:
                assert watcher.stdout.readline() == "ready\n"
                try:
                    snapcore.snapshot(os.getpid(), path)
                except KeyboardInterrupt:
                    interrupted = True
            finally:
                out, _ = watcher.communicate(timeout=60)
            assert watcher.returncode == 0 and out in ("sent\n", "missed\n"), (i, out)
            outcomes.append(out.strip())
            if out == "sent\n":
                assert interrupted, f"point {i}: the signal was sent, and the snapshot went on"
                assert not path.exists()
            else:
                assert not interrupted and path.exists(), i  # over before the signal
                path.unlink()
            assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []
            assert_untraced(os.getpid())
            assert set(our_children()) == before
    finally:
        signal.signal(signal.SIGALRM, old)
    assert outcomes[0] == "sent" and outcomes.count("sent") >= 3, outcomes
    del data
