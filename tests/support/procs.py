"""Processes around a test: health checks of a target, running commands, fault timing.

    assert_runs_on(target)    not stopped, not traced, still making progress
    assert_untraced(pid)      no thread traced (or stopped, unless allowed)
    wait_all_blocked(pid)     every thread asleep in a syscall, and staying there
    wait_frozen(pid)          every thread in a ptrace stop: a freeze is complete
    Subreaper                 orphans of the test's descendants come to the test
    run / snapcore_cli        a command, with a timeout, output captured

Trial counts are small in CI and large under ``make soak`` (SNAPCORE_SOAK=1).
"""

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

SOAK = os.environ.get("SNAPCORE_SOAK") == "1"
SYS_TGKILL = 234  # x86_64
PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def trials(ci, soak):
    return soak if SOAK else ci


# ---------------------------------------------------------------------------
# /proc views of a process


def task_states(pid):
    """{tid: (state letter, TracerPid)} for every thread."""
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                text = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        state = re.search(r"^State:\s+(\S)", text, re.M).group(1)
        tracer = int(re.search(r"^TracerPid:\s+(\d+)", text, re.M).group(1))
        out[int(t)] = (state, tracer)
    return out


def proc_state(pid):
    """The state letter of pid, or None when it is gone (reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def start_time(pid):
    """Field 22 of /proc/PID/stat: tells a process from a later one with its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError):
        return None


def tgid_of(tid):
    try:
        with open(f"/proc/{tid}/status") as f:
            return int(re.search(r"^Tgid:\s+(\d+)", f.read(), re.M).group(1))
    except (FileNotFoundError, ProcessLookupError):
        return None


def children_of(pid):
    """Every child of pid (all its threads' children), zombies included."""
    kids = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return kids


def tracer_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return -1
    return 0


def tgkill(tgid, tid, sig):
    if _libc.syscall(SYS_TGKILL, tgid, tid, sig) != 0:
        raise OSError(ctypes.get_errno(), "tgkill")


# ---------------------------------------------------------------------------
# health of a target after a snapshot


def assert_untraced(pid, stopped_ok=False):
    """No thread is traced; none is stopped unless stopped_ok."""
    deadline = time.monotonic() + 5
    while True:
        states = task_states(pid)
        bad = {t: s for t, s in states.items() if s[1] != 0 or (not stopped_ok and s[0] in "tT")}
        if not bad:
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"target {pid} threads still stopped/traced: {bad}")
        time.sleep(0.02)


def assert_runs_on(target, progress=True):
    """Not stopped, not traced, answering; and still making progress (its ticks
    advance), unless progress=False (``mt still`` ticks nothing on purpose)."""
    assert target.proc.poll() is None, f"target exited with {target.proc.returncode}"
    assert_untraced(target.pid)
    first = target.ping()
    deadline = time.monotonic() + 5
    while progress and target.ping() <= first:
        if time.monotonic() > deadline:
            raise AssertionError("target answers but it makes no progress")
        time.sleep(0.01)


def wait_all_stopped(pid, timeout=5.0):
    """Wait until every thread is in a job-control stop ('T') and untraced."""
    deadline = time.monotonic() + timeout
    while True:
        states = task_states(pid)
        if states and all(s == ("T", 0) for s in states.values()):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"target {pid} not fully stopped: {states}")
        time.sleep(0.005)


def frozen(pid):
    """The tracer's pid if every thread of pid is in a ptrace stop by one tracer, else None."""
    try:
        states = task_states(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None
    tracers = {tr for _, tr in states.values()}
    if states and all(s == "t" for s, _ in states.values()) and len(tracers) == 1:
        return tgid_of(tracers.pop())
    return None


def wait_frozen(pid, timeout=30.0, proc=None):
    """Wait until every thread of pid is ptrace-stopped; return the tracer's process id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tracer = frozen(pid)
        if tracer:
            return tracer
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"snapcore ended ({proc.returncode}) before {pid} was frozen")
        time.sleep(0.0002)
    raise AssertionError(f"{pid} was not frozen within {timeout}s: {task_states(pid)}")


def wait_traced(pid, timeout=20.0, proc=None):
    """Poll until some thread of pid is traced (a snapshot is under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except (FileNotFoundError, ProcessLookupError):
            return False
        for t in tids:
            try:
                with open(f"/proc/{pid}/task/{t}/status") as f:
                    text = f.read()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if "\nTracerPid:\t0\n" not in text:
                return True
        time.sleep(0.0005)
    return False


def wait_written(pid, nbytes, timeout=30.0):
    """Wait until process pid has written nbytes in all (/proc/PID/io wchar): a point
    in a dump it is writing, which no speed of the copy can outrun the way a delay can.
    False if pid ended first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/io") as f:
                written = int(f.read().split("wchar:")[1].split()[0])
        except (OSError, IndexError, ValueError):
            return False
        if written >= nbytes:
            return True
        if time.monotonic() > deadline:
            raise AssertionError(f"{pid} wrote {written} bytes in {timeout}s, not {nbytes}")


def stop_process(pid, timeout=10.0):
    """SIGSTOP pid and wait until it is stopped; False if it exited first."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while True:
        state = proc_state(pid)
        if state in ("T", "t"):
            return True
        if state in (None, "Z", "X"):
            return False
        if time.monotonic() > deadline:
            raise AssertionError(f"{pid} did not stop ({state})")
        time.sleep(0.0005)


def thread_blocked_at(pid, tid):
    """(syscall line, wchan) of a thread sleeping in a syscall, or None."""
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall") as f:
            sc = f.read().strip()
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/task/{tid}/wchan") as f:
            wchan = f.read()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if state != "S" or not sc[:1].isdigit():
        return None
    return sc, wchan


def wait_all_blocked(pid, timeout=10.0, settle=0.05):
    """Wait until every thread sleeps in a syscall and stays there for ``settle`` s.

    A process in this state changes nothing in its memory or registers until
    something wakes it: the base of the kernel differential test.
    """
    deadline = time.monotonic() + timeout
    while True:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        first = {t: thread_blocked_at(pid, t) for t in tids}
        if all(first.values()):
            time.sleep(settle)
            if {t: thread_blocked_at(pid, t) for t in tids} == first:
                return first
        if time.monotonic() > deadline:
            raise AssertionError(f"threads of {pid} not all blocked: {first}")
        time.sleep(0.01)


# ---------------------------------------------------------------------------
# orphans


class Subreaper:
    """While in use, this process is a child subreaper: whatever a descendant
    leaves behind when it dies (snapcore's helper, a forked image) is re-parented
    here instead of to init, where the test can see it and must reap it.

    ``orphans()`` lists the children that are neither ``known`` nor reaped yet
    as {pid: (state, exe)}; ``reap()`` collects the dead ones.
    """

    def __init__(self, known=()):
        self.known = set(known)

    def __enter__(self):
        if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        return self

    def __exit__(self, *exc):
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        # anything still ours is killed and reaped: nothing outlives the test
        for pid in self.orphans():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.reap(timeout=10)

    def orphans(self):
        out = {}
        for pid in children_of(os.getpid()):
            if pid in self.known:
                continue
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                exe = None
            out[pid] = (proc_state(pid), exe)
        return out

    def reap(self, timeout=0.0):
        """Reap dead orphans; wait up to timeout for the living ones to die.
        Returns {pid: (state, exe)} of those still alive."""
        deadline = time.monotonic() + timeout
        while True:
            alive = {}
            for pid, (state, exe) in self.orphans().items():
                if state in ("Z", "X"):
                    try:
                        os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        pass
                elif state is not None:
                    alive[pid] = (state, exe)
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(0.01)


# ---------------------------------------------------------------------------
# running commands


def run(argv, timeout=60, check=False, env=None, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{argv} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def snapcore_cli(*args, timeout=120, **kw):
    return run([sys.executable, "-m", "snapcore", *map(str, args)], timeout=timeout, **kw)


def snapcore_popen(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "snapcore", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def have(tool):
    return shutil.which(tool) is not None


def live_tids(pid):
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def assert_one_line_error(p, code, *fragments):
    """The CLI failed as documented: this exit status, one `snapcore: error:` line."""
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("snapcore: error: "), p.stderr
    assert "Traceback" not in p.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]


def info_json(path, *extra):
    """`snapcore info PATH --json`, parsed (one object on one line)."""
    p = snapcore_cli("info", path, "--json", *extra)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, p.stdout
    return json.loads(lines[0])
