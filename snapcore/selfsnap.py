"""Snapshots of the calling process itself, through a helper process.

No thread may ptrace a thread of its own process, so a core of the caller is
taken by a short-lived helper (``python -m snapcore._helper``), a child of the
caller.  The caller's tracer thread drives it over two pipes:

    caller: tracer thread (run_traced)          helper: one tracer thread
    ------------------------------------        ---------------------------------
    spawn helper; PR_SET_PTRACER(helper)   -->  PR_SET_PDEATHSIG(SIGKILL); "ready"
    [hold]  (only when it will trace our   -->  seize our threads blocked in
            own children, see below)            wait4()/waitid(); keep those
                                                stopped inside that syscall
    ... freeze and write other processes ...
    dump PATH                              -->  freeze every thread of ours (the
                                                calling thread is blocked in this
                                                call, the tracer thread reads the
                                                pipe), write the core, resume all
                                           <--  Snapshot or the error
    bye / EOF                              -->  let go of anything held, exit

Why "hold": a ptrace stop of a tracee can be collected by any thread of the
tracer's process.  If one of our threads sits in waitpid() on a child
(subprocess.Popen.wait()) while our tracer thread stops that child, the
waitpid() returns the stop (Popen.returncode becomes -SIGTRAP) and the tracer
never sees it.  A thread held stopped inside wait4()/waitid() cannot do that;
its syscall restarts when it is let go, after our tracer has collected the
stops.  Only threads stopped inside the wait syscall are held: a thread
stopped in Python code could hold the GIL that our tracer thread needs.

The helper writes nothing to the pipes while it holds our threads stopped, so
a full pipe can never wedge the pair.  If the caller dies the helper gets
SIGKILL; if the helper dies the kernel detaches whatever it traced.
"""
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time

from . import _sys
from .errors import SnapcoreError, SnapshotCancelled
from .tracer import CancelToken, run_traced

_LEN = struct.Struct("<I")
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STARTUP_TIMEOUT = 30.0


class HelperError(SnapcoreError):
    """The helper process failed in a way no other error describes."""


def send(fd, obj):
    data = pickle.dumps(obj, protocol=4)
    data = _LEN.pack(len(data)) + data
    while data:
        n = os.write(fd, data)
        data = data[n:]


def recv(fd, timeout=None, cancel=None):
    """Read one message; None at EOF.

    Reads exactly one frame, so nothing of a later message is consumed.  A
    cancel request or the timeout is honoured only between messages, never
    with half a frame read (SnapshotCancelled, HelperError).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    buf = b""
    need = _LEN.size
    length = None
    while True:
        while len(buf) < need:
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                chunk = os.read(fd, need - len(buf))
                if not chunk:
                    return None
                buf += chunk
                continue
            if not buf and length is None:
                if cancel is not None and cancel.is_set():
                    raise SnapshotCancelled()
                if deadline is not None and time.monotonic() > deadline:
                    raise HelperError("the snapcore helper did not answer in time")
        if length is None:
            length = _LEN.unpack_from(buf)[0]
            buf = b""
            need = length
            continue
        return pickle.loads(buf)


class HelperSession:
    """A helper process that traces the caller; use from the caller's tracer thread."""

    def __init__(self, cancel=None, stop_timeout=5.0):
        self.cancel = cancel if cancel is not None else CancelToken()
        self.stop_timeout = stop_timeout
        self.proc = None
        self.held = []

    def start(self):
        code = (f"import sys; sys.path.insert(0, {_PKG_PARENT!r}); "
                "from snapcore._helper import main; sys.exit(main())")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                close_fds=True)
        except OSError as exc:
            raise HelperError(f"cannot start the snapcore helper process: {exc}") from exc
        try:
            _sys.set_ptracer(self.proc.pid)
        except OSError as exc:
            self.close()
            raise HelperError(f"prctl(PR_SET_PTRACER) failed: {exc.strerror}") from exc
        reply = self._recv(STARTUP_TIMEOUT)
        if reply != ("ready",):
            self.close()
            raise HelperError(f"the snapcore helper did not start: {reply!r}")
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def _recv(self, timeout=None):
        msg = recv(self.proc.stdout.fileno(), timeout, self.cancel)
        if msg is None:
            rc = self.proc.wait()
            err = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
            tail = f": {err[-1]}" if err else ""
            raise HelperError(f"the snapcore helper exited unexpectedly (status {rc}){tail}")
        return msg

    def _call(self, request, timeout=None):
        try:
            send(self.proc.stdin.fileno(), request)
        except OSError as exc:
            raise HelperError(f"the snapcore helper is gone ({exc.strerror})") from exc
        try:
            kind, value = self._recv(timeout)
        except SnapshotCancelled:
            self._cancel_call()
            raise
        if kind == "error":
            raise value
        return value

    def _cancel_call(self):
        """Cancelled while the helper works: make it stop, and undo what it finished.

        While the helper dumps us, our own threads are stopped, so a Ctrl-C or
        SIGTERM reaches us only once the dump is over: the helper may well
        have written the core by then.  A cancelled snapshot leaves no core.
        """
        p = self.proc
        try:
            p.send_signal(signal.SIGTERM)
        except OSError:
            pass
        try:
            reply = recv(p.stdout.fileno(), STARTUP_TIMEOUT)
        except (HelperError, OSError, EOFError, pickle.UnpicklingError):
            return
        if reply and reply[0] == "ok" and hasattr(reply[1], "path"):
            try:
                os.unlink(reply[1].path)
            except OSError:
                pass

    def hold_waiters(self, skip=()):
        """Hold our threads that are blocked in wait4()/waitid(); returns their tids."""
        self.held = self._call(("hold", {"skip": list(skip),
                                         "stop_timeout": self.stop_timeout}),
                               timeout=self.stop_timeout + STARTUP_TIMEOUT)
        return self.held

    def dump(self, path, force=False, coredump_filter=None, writer_thread=True,
             buffer_size=16 << 20):
        """Core of the calling process at path, taken by the helper."""
        return self._call(("dump", {"path": os.path.abspath(path), "force": force,
                                    "stop_timeout": self.stop_timeout,
                                    "coredump_filter": coredump_filter,
                                    "writer_thread": writer_thread,
                                    "buffer_size": buffer_size}))

    def close(self):
        """Let go of anything held, end and reap the helper.  Never raises."""
        p, self.proc = self.proc, None
        if p is None:
            return
        if self.cancel.is_set():
            p.send_signal(signal.SIGTERM)     # it cancels what it is doing and resumes us
        try:
            send(p.stdin.fileno(), ("bye", {}))
        except Exception:
            pass
        for f in (p.stdin,):
            try:
                f.close()
            except Exception:
                pass
        try:
            p.wait(timeout=self.stop_timeout + 5)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()          # the kernel detaches what it traced
                p.wait()
        for f in (p.stdout, p.stderr):
            try:
                f.close()
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def snapshot_self(path, *, force=False, stop_timeout=5.0, coredump_filter=None,
                  writer_thread=True, buffer_size=16 << 20):
    """snapshot(os.getpid(), path): the helper dumps us while this thread waits."""
    t0 = time.monotonic()
    cancel = CancelToken()

    done = {}

    def job():
        helper = HelperSession(cancel, stop_timeout)
        try:
            helper.start()
            done["snap"] = helper.dump(path, force=force, coredump_filter=coredump_filter,
                                       writer_thread=writer_thread, buffer_size=buffer_size)
            return done["snap"]
        finally:
            helper.close()

    try:
        snap = run_traced(job, cancel, name="snapcore-self")
    except BaseException:
        # interrupted: our threads were stopped during the dump, so the signal
        # may have been handled only after the helper finished: take it back
        if "snap" in done:
            try:
                os.unlink(done["snap"].path)
            except OSError:
                pass
        raise
    snap.path = path                       # as given (the helper was handed an absolute one)
    snap.wall_time = time.monotonic() - t0
    return snap
