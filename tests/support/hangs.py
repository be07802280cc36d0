"""Hung targets for `snapcore why` tests: their facts, defined once, and waits.

    tests/targets/hang.c      C: mutex, workers N, spin, accept, waitpipe, rwlock
    tests/targets/pyhang.py   Python: rlock, lock, idle (any CPython 3.8+)

Every target is started through the ``spawn`` fixture (killed and reaped in
its ``finally``); every wait here has a timeout.
"""

import json
import os
import re
import signal
import time

from .procs import assert_untraced, snapcore_cli
from .targets import TARGETS, TargetTimeout

PYHANG = os.path.join(TARGETS, "pyhang.py")
X86_64_FUTEX, X86_64_READ, X86_64_WAIT4, X86_64_ACCEPT = 202, 0, 61, 43
X86_64_CLOCK_NANOSLEEP = 230
C_THREAD_FUNCS = {"mutex": ("lock_ab", "lock_ba"), "workers": ("worker_wait",)}
PY_THREAD_FUNCS = {"rlock": ("rlock_ab", "rlock_ba"), "lock": ("holder", "waiter")}


def pythons():
    """{"3.11": path, ...}: the interpreters to run Python targets with."""
    out = {}
    for v in ("3.11", "3.12", "3.13"):
        root = "/root/.pyenv/versions"
        for d in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            exe = os.path.join(root, d, "bin", f"python{v}")
            if d.startswith(v + ".") and os.access(exe, os.X_OK):
                out[v] = exe
    return out


def syscall_of(pid, tid):
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall") as f:
            first = f.read().split()[0]
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None, None
    return (int(first) if first.lstrip("-").isdigit() else None), state


def wait_in(pid, tids, syscalls, timeout=20.0, settle=0.05):
    """Wait until every tid sleeps (S) in one of syscalls, twice settle apart."""
    deadline = time.monotonic() + timeout
    while True:
        now = [syscall_of(pid, t) for t in tids]
        if all(nr in syscalls and st == "S" for nr, st in now):
            time.sleep(settle)
            if [syscall_of(pid, t) for t in tids] == now:
                return
        if time.monotonic() > deadline:
            raise TargetTimeout(f"threads {tids} of {pid} not all in {syscalls}: {now}")
        time.sleep(0.01)


def assert_hangs_on(target, tids=None):
    """The target outlived the snapshot as it was: alive, not stopped, TracerPid 0,
    its hung threads still there."""
    assert target.proc.poll() is None, f"target exited with {target.proc.returncode}"
    states = assert_untraced(target.pid)
    assert all(s[0] not in "tT" for s in states.values()), states
    for tid in tids or []:
        assert tid in states, (tid, states)


def why_json(*args, timeout=120):
    p = snapcore_cli("why", *map(str, args), "--json", timeout=timeout)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, p.stdout
    return json.loads(lines[0])


def thread_of(result, tid):
    for p in result["processes"]:
        for t in p["threads"]:
            if t["tid"] == tid:
                return p, t
    raise AssertionError(f"thread {tid} not in the result")


def kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, TypeError):
        pass


def pystack_frames(core, exe=None):
    """{tid: [(function, file, line)] innermost first} by pystack's Python API."""
    from pystack.engine import CoreFileAnalyzer, NativeReportingMode, get_process_threads_for_core

    if exe is None:
        exe = str(CoreFileAnalyzer(str(core)).extract_executable())
    threads = get_process_threads_for_core(str(core), exe, native_mode=NativeReportingMode.OFF)
    out = {}
    for t in threads:
        frames = [(f.code.scope, f.code.filename, f.code.location.lineno) for f in t.frames]
        out[t.tid] = frames[::-1]
    return out


def note_frames(record):
    """{tid: [(function, file, line)]} from a SNAPCORE record's Python stacks."""
    out = {}
    for t in record["threads"]:
        if t.get("python"):
            out[t["tid"]] = [(f["name"], f["file"], f["line"]) for f in t["python"]["frames"]]
    return out


def shown(result):
    """A result in a form that reads well in an assertion message."""
    return json.dumps({k: result[k] for k in ("verdict", "summary", "deadlocks")}, indent=1)


HEX = re.compile(r"0x[0-9a-f]+")
