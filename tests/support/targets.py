"""The test targets: where they are, how to drive one, and what each is known to hold.

Every target is a real process started here; tests never mock ptrace or /proc.
``Target`` starts one, reads its "READY {json}" line and talks to it by line
commands; ``Target.close`` (called from the fixtures' ``finally``) SIGKILLs and
reaps it whatever happened.

The facts below (the function each thread is blocked in, the globals, the
bytes of the known buffers) come from the targets' sources in tests/targets/
and are defined here once: every test that checks what a reader shows imports
them from here, never from snapcore.
"""

import importlib.metadata
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time

from .strict import missing, need

SUPPORT = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(SUPPORT)
ROOT = os.path.dirname(TESTS)
TARGETS = os.path.join(TESTS, "targets")
BIN = os.path.join(TARGETS, "bin")

PYTHREADS = os.path.join(TARGETS, "pythreads.py")
TREE = os.path.join(TARGETS, "tree.py")
HANG2 = os.path.join(TARGETS, "hang2.py")
HANGSUITES = os.path.join(TARGETS, "hangsuite")

# ---------------------------------------------------------------------------
# mt.c (mt, mt_nopie, mt_static, mt32): four threads, in the order of READY's "tids"

C_TARGETS = ("mt", "mt_nopie", "mt_static", "mt32")
MT_THREAD_FUNCS = ("command_loop", "sleeper_thread", "cond_waiter_thread", "pipe_reader_thread")
MT_THREAD_NAMES = ("mt", "sleeper", "waiter", "reader")  # pthread_setname_np / comm
MT_OUTER = "main"  # further up the main thread's stack
MARKER = 0x5EED5EED12345678  # volatile uint64_t snapcore_marker, in .data
SYS_READ = {"mt32": 3}  # the syscall the main thread waits in: read(2), i386 or x86_64


def read_nr(name):
    return SYS_READ.get(name, 0)


# pythreads.py: main thread in outer() -> inner() -> time.sleep, a worker in Event.wait
PY_THREAD_FUNCS = ("time_sleep", "PyThread_acquire_lock_timed")  # their C frames
# their Python frames, outermost first (the worker: Event.wait -> Condition.wait)
PY_FRAMES = (("<module>", "main", "outer", "inner"), ("worker_loop", "wait", "wait"))
PY_OUTER = "Py_BytesMain"


def is_python(name):
    """ "python" (this interpreter) or "python3.12" (pythreads.py under CPython 3.12)."""
    return name.startswith("python")


def thread_funcs(name):
    """The C function each thread of target ``name`` is blocked in, READY "tids" order."""
    return PY_THREAD_FUNCS if is_python(name) else MT_THREAD_FUNCS


def outer_func(name):
    """A function further up the main thread's stack (python's main() is a tail call)."""
    return PY_OUTER if is_python(name) else MT_OUTER


def pattern_buf(length, word_bits=64):
    """The bytes mt.c writes into its 1 MiB buffer ("buf")."""
    mask = (1 << word_bits) - 1
    return bytes(((((i * 2654435761) & mask) >> 13) & 0xFF) ^ 0xA5 for i in range(length))


def pattern_half(length):
    """The first quarter of mt.c's 4 MiB buffer ("half"); the rest is never touched."""
    return bytes((i * 7 + 1) & 0xFF for i in range(length))


def edge_pattern(seed, length):
    """The bytes mt.c fill(p, length, seed) writes (its edge mappings and files)."""
    return bytes((i * 31 + seed * 17 + (i >> 12)) & 0xFF for i in range(length))


def target_path(name):
    return os.path.join(BIN, name)


def need_built(name):
    """The path of a built target; mt32 needs gcc -m32 (gcc-multilib, see .ci/deps)."""
    path = target_path(name)
    need(os.path.exists(path), f"{name} was not built (tests/targets/Makefile says why)")
    return path


# ---------------------------------------------------------------------------
# driving a target


class TargetTimeout(AssertionError):
    pass


def wait_blocked(pid, tid, syscalls, timeout=10.0):
    """Wait until thread tid of process pid sleeps in one of these syscalls (numbers)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                nr = f.read().split()[0]
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            nr, state = "", ""
        if nr.lstrip("-").isdigit() and int(nr) in syscalls and state == "S":
            return
        if time.monotonic() > deadline:
            raise TargetTimeout(f"thread {tid} not blocked in {syscalls} (at {nr!r})")
        time.sleep(0.002)


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

    def wait_blocked(self, tid=None, syscalls=None, timeout=10.0):
        """Wait until thread tid (default: main) sits in one of these syscalls
        (default: read(2), the command loop's wait).

        Lets a test snapshot a thread at a known place rather than on its way
        back from answering the last command.
        """
        if syscalls is None:
            syscalls = (read_nr(os.path.basename(self.argv[0])),)
        wait_blocked(self.pid, tid or self.pid, syscalls, timeout)

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


def spawn_python_threads(spawn, exe=sys.executable):
    """pythreads.py under exe, with both threads at their known places."""
    t = spawn([exe, PYTHREADS])
    # time.sleep: clock_nanosleep since CPython 3.11, select() (pselect6) before
    t.wait_blocked(syscalls=(230, 270))
    t.wait_blocked(tid=t.info["tids"][1], syscalls=(202,))  # futex
    return t


# ---------------------------------------------------------------------------
# Python interpreters to run as targets


def supported_pythons():
    """["3.9", ...]: the versions snapcore supports, from its classifiers (pyproject.toml)."""
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
    """python_interpreter(version); a missing one is a missing oracle (support.strict)."""
    exe = python_interpreter(version)
    if exe is None:
        missing(
            f"no Python {version} interpreter (pyenv install {version}, or python{version} on PATH)"
        )
    return exe
