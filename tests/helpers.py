"""Shared test helpers: real target processes, real tools, health checks.

Every target is a real process started here; tests never mock ptrace or
/proc.  Every wait has a timeout, and ``Target.close`` (called from fixtures'
``finally``) SIGKILLs and reaps the process whatever happened.
"""

import ctypes
import json
import os
import re
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = os.path.join(HERE, "targets")
BIN = os.path.join(TARGETS, "bin")
ROOT = os.path.dirname(HERE)


def target_path(name):
    return os.path.join(BIN, name)


class TargetTimeout(AssertionError):
    pass


class Target:
    """A target process that prints "READY {json}" and answers line commands."""

    def __init__(self, argv, cwd=None, env=None, preexec_fn=None, ready_timeout=20.0, user=None):
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            preexec_fn=preexec_fn,
            user=user,
        )
        self.pid = self.proc.pid
        self._buf = b""
        self.info = {}
        try:
            line = self.readline(ready_timeout)
            if not line.startswith("READY"):
                raise AssertionError(f"target said {line!r} instead of READY")
            payload = line[len("READY") :].strip()
            self.info = json.loads(payload) if payload else {}
        except BaseException:
            self.close()
            raise

    def readline(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TargetTimeout(
                    f"no line from {self.argv[0]} within {timeout}s (got {self._buf!r})"
                )
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    err = self.proc.stderr.read() if self.proc.poll() is not None else b""
                    raise AssertionError(
                        f"target {self.argv[0]} closed stdout "
                        f"(rc={self.proc.poll()}, stderr={err[-500:]!r})"
                    )
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def command(self, text, timeout=10.0):
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()
        return self.readline(timeout)

    def ping(self, timeout=10.0):
        reply = self.command("ping", timeout)
        m = re.match(r"pong (\d+)", reply)
        assert m, f"bad ping reply {reply!r}"
        return int(m.group(1))

    def wait_blocked(self, tid=None, syscalls=(0,), timeout=10.0):
        """Wait until thread tid (default: main) sits in one of these syscalls.

        Lets a test snapshot a thread at a known place rather than on its way
        back from answering the last command.
        """
        tid = tid or self.pid
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(f"/proc/{self.pid}/task/{tid}/syscall") as f:
                    nr = f.read().split()[0]
                with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                nr, state = "", ""
            if nr.lstrip("-").isdigit() and int(nr) in syscalls and state == "S":
                return
            if time.monotonic() > deadline:
                raise TargetTimeout(f"thread {tid} not blocked in {syscalls} (at {nr!r})")
            time.sleep(0.002)

    def close(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------
# health of a target after a snapshot


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
            raise TargetTimeout(f"threads of {pid} not all blocked: {first}")
        time.sleep(0.01)


def assert_runs_on(target):
    """Not stopped, not traced, and still making progress (ticks advance)."""
    assert target.proc.poll() is None, f"target exited with {target.proc.returncode}"
    assert_untraced(target.pid)
    first = target.ping()
    deadline = time.monotonic() + 5
    while target.ping() <= first:
        if time.monotonic() > deadline:
            raise AssertionError("target answers but its sleeper thread makes no progress")
        time.sleep(0.01)


# ---------------------------------------------------------------------------
# the kernel's own core of a target, as a reference


def kernel_core_path(cwd, pid):
    with open("/proc/sys/kernel/core_uses_pid") as f:
        uses_pid = f.read().strip() == "1"
    return os.path.join(cwd, f"core.{pid}" if uses_pid else "core")


def _require_comparable_kernel_core():
    with open("/proc/sys/kernel/core_pattern") as f:
        pattern = f.read().strip()
    if pattern.startswith("|"):
        pytest.skip(
            f"kernel.core_pattern is a pipe ({pattern!r}): the kernel hands cores to "
            f"that program, not to a file in the process's cwd"
        )
    if pattern != "core":
        pytest.skip(
            f"kernel.core_pattern is {pattern!r}, not 'core': this test reads the "
            f"kernel's core from the process's cwd"
        )
    try:
        with open("/proc/sys/kernel/core_sort_vma") as f:
            sort_vma = f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        sort_vma = "0"  # kernels before 6.14 do not have it
    if sort_vma != "0":
        pytest.skip(
            "kernel.core_sort_vma is on: the kernel orders its PT_LOADs by dump size "
            "(docs/kernel-differences.md), snapcore keeps address order"
        )


def _unlimited_core():
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _tgkill(pid, tid, sig):
    libc = ctypes.CDLL(None, use_errno=True)
    sys_tgkill = 234  # x86_64
    if libc.syscall(sys_tgkill, pid, tid, sig) != 0:
        raise OSError(ctypes.get_errno(), "tgkill")


def snapshot_then_kernel_core(spawn, tmp_path, exe, *args, filter_=None):
    """Run ``exe still ARGS``, snapshot it, then let the kernel dump it.

    Returns (target, kernel core, snapcore core) as coreparse.Core objects.
    The target is deterministic (every thread blocked, rseq off); between the
    snapshot and SIGABRT the test checks it runs on: untraced, every thread
    back in the very same wait.  SIGABRT goes to the main thread (tgkill), so
    the kernel's dumping thread is the one snapcore puts first.
    """
    import snapcore

    from coreparse import Core

    _require_comparable_kernel_core()
    if not os.path.exists(target_path(exe)):
        pytest.skip(f"{exe} was not built (tests/targets/Makefile says why)")
    env = dict(os.environ, GLIBC_TUNABLES="glibc.pthread.rseq=0")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    t = spawn(exe, "still", *args, cwd=str(workdir), env=env, preexec_fn=_unlimited_core)
    if filter_ is not None:
        with open(f"/proc/{t.pid}/coredump_filter", "w") as f:
            f.write(f"{filter_:#x}")
    blocked = wait_all_blocked(t.pid)
    ours = snapcore.snapshot(t.pid, tmp_path / "snap.core")
    # the target runs on: untraced, and every thread went back to the very same wait
    assert_untraced(t.pid)
    assert wait_all_blocked(t.pid) == blocked
    assert all(s == ("S", 0) for s in task_states(t.pid).values())
    _tgkill(t.pid, t.pid, signal.SIGABRT)
    assert t.proc.wait(timeout=60) == -signal.SIGABRT
    kpath = kernel_core_path(str(workdir), t.pid)
    assert os.path.exists(kpath), f"the kernel wrote no core in {workdir}"
    return t, Core(kpath), Core(ours.path)


# ---------------------------------------------------------------------------
# running tools


def run(argv, timeout=60, check=False, env=None, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{argv} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def snapcore_cli(*args, timeout=120, **kw):
    return run([sys.executable, "-m", "snapcore", *map(str, args)], timeout=timeout, **kw)


def have(tool):
    return shutil.which(tool) is not None


# SNAPCORE_REQUIRE_ORACLES=1 (CI): whatever a test needs and does not find (a reader, a tool,
# a Python interpreter to use as a target) fails that test instead of skipping it.
# conftest.py turns every other skip into a failure too.
STRICT = os.environ.get("SNAPCORE_REQUIRE_ORACLES") == "1"


def missing(why):
    """Skip the test for want of something; under SNAPCORE_REQUIRE_ORACLES=1, fail it."""
    if STRICT:
        pytest.fail(f"{why} (SNAPCORE_REQUIRE_ORACLES=1 requires it)", pytrace=False)
    pytest.skip(why)


def require_tool(tool):
    if not have(tool):
        missing(f"{tool} is not installed")


# ---------------------------------------------------------------------------
# Python interpreters to run as targets


def supported_pythons():
    """["3.9", ...]: the versions snapcore supports, from its classifiers (pyproject.toml)."""
    import importlib.metadata

    classifiers = importlib.metadata.metadata("snapcore").get_all("Classifier") or []
    found = [
        m.group(1)
        for c in classifiers
        if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))
    ]
    return sorted(found, key=lambda v: tuple(map(int, v.split("."))))


def python_interpreter(version):
    """The path of a CPython X.Y: pyenv's newest X.Y.Z, else pythonX.Y on PATH, else None."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = []
    versions = os.path.join(root, "versions")
    if os.path.isdir(versions):
        for name in os.listdir(versions):
            m = re.fullmatch(rf"{re.escape(version)}\.(\d+)", name)
            exe = os.path.join(versions, name, "bin", f"python{version}")
            if m and os.access(exe, os.X_OK):
                found.append((int(m.group(1)), exe))
    if found:
        return max(found)[1]
    return shutil.which(f"python{version}")


def require_python(version):
    """python_interpreter(version), or skip (fail under SNAPCORE_REQUIRE_ORACLES=1)."""
    exe = python_interpreter(version)
    if exe is None:
        missing(
            f"no Python {version} interpreter (pyenv install {version}, or python{version} on PATH)"
        )
    return exe


def gdb_batch(exe, core, *commands, timeout=120):
    argv = ["gdb", "-nx", "-batch", "-ex", "set debuginfod enabled off"]
    for c in commands:
        argv += ["-ex", c]
    argv += [exe, core] if exe else ["-c", core]
    return run(argv, timeout=timeout)


def eu_stack_tids(core, exe=None, timeout=60):
    """Thread ids eu-stack finds in a core."""
    argv = ["eu-stack", "--core", str(core)] + (["-e", exe] if exe else [])
    p = run(argv, timeout=timeout)
    return [int(m) for m in re.findall(r"^TID (\d+):", p.stdout, re.M)]


def gdb_live_registers(pid, exe, timeout=60):
    """{tid: {reg: value}} read by gdb attached to the live (stopped) process."""
    p = run(
        [
            "gdb",
            "-nx",
            "-batch",
            "-ex",
            "set debuginfod enabled off",
            exe,
            "-p",
            str(pid),
            "-ex",
            "thread apply all info registers",
            "-ex",
            "thread apply all info registers fs_base",
        ],
        timeout=timeout,
    )
    regs = {}
    cur = None
    for line in p.stdout.splitlines():
        m = re.match(r"Thread \d+ \(.*LWP (\d+)", line)
        if m:
            cur = regs.setdefault(int(m.group(1)), {})
            continue
        m = re.match(r"^(\w+)\s+(0x[0-9a-f]+)", line)
        if m and cur is not None:
            cur[m.group(1)] = int(m.group(2), 16)
    return regs


# ---------------------------------------------------------------------------
# reading cores with pyelftools (framing only: content checks use real tools)


def core_notes(path):
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        out = []
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_NOTE":
                for n in seg.iter_notes():
                    out.append(
                        (
                            n["n_name"],
                            n["n_type"],
                            n["n_descsz"],
                            n["n_descdata"] if isinstance(n["n_descdata"], bytes) else None,
                            n,
                        )
                    )
        return out


def core_loads(path):
    """Every PT_LOAD as a dict (vaddr, memsz, filesz, flags, offset, align, paddr)."""
    import dataclasses

    from coreparse import Core

    with Core(path) as c:
        return [dataclasses.asdict(ld) for ld in c.loads]


def read_core_memory(path, addr, length):
    """Bytes at a virtual address, from the core's PT_LOAD data (zeros past p_filesz)."""
    from coreparse import Core

    with Core(path) as c:
        return c.read(addr, length)


def prstatus_regs(desc):
    """(tid, {reg: value}) from an x86_64 NT_PRSTATUS descriptor."""
    names = (
        "r15",
        "r14",
        "r13",
        "r12",
        "rbp",
        "rbx",
        "r11",
        "r10",
        "r9",
        "r8",
        "rax",
        "rcx",
        "rdx",
        "rsi",
        "rdi",
        "orig_rax",
        "rip",
        "cs",
        "eflags",
        "rsp",
        "ss",
        "fs_base",
        "gs_base",
        "ds",
        "es",
        "fs",
        "gs",
    )
    tid = struct.unpack_from("<i", desc, 32)[0]
    vals = struct.unpack_from("<27Q", desc, 112)
    return tid, dict(zip(names, vals))


def raw_notes(path):
    """[(name, type, desc bytes)] straight from the PT_NOTE bytes."""
    from coreparse import Core

    with Core(path) as c:
        return list(c.notes)


def pattern_buf(length, word_bits=64):
    """The bytes tests/targets/mt.c writes into its 1 MiB buffer."""
    mask = (1 << word_bits) - 1
    return bytes(((((i * 2654435761) & mask) >> 13) & 0xFF) ^ 0xA5 for i in range(length))


def pattern_half(length):
    return bytes((i * 7 + 1) & 0xFF for i in range(length))


def edge_pattern(seed, length):
    """The bytes mt.c fill(p, length, seed) writes (its edge mappings and files)."""
    return bytes((i * 31 + seed * 17 + (i >> 12)) & 0xFF for i in range(length))
