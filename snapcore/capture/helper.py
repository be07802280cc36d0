"""snapcore's helper process: the ptrace work that must happen outside the caller.

Three cases need a process of their own:

  * the caller itself (``snapshot(os.getpid())``, a tree the caller is in): no
    thread may ptrace a thread of its own process;
  * live snapshots: an injected system call must survive snapcore's death
    (SIGKILL, or Ctrl-C sent to the whole process group), or the target's
    thread would run on with borrowed registers;
  * the caller's own children: any thread of a tracer's process may collect
    its tracees' ptrace stops, so a Popen.wait() elsewhere in the caller would
    take them and report the child dead.

One mechanism serves all three.  ``Helper.start()`` makes a child process in a
session of its own, deaf to SIGINT, SIGTERM and SIGHUP: forked when the caller
has a single thread (about a millisecond), else a fresh interpreter running
``main()``.  Under Yama ptrace_scope 1 the caller declares it as its ptracer.
Requests and replies are frames over one Unix socket pair:

    frame = u32 length (little-endian) + pickle; file descriptors travel with
            the length word (SCM_RIGHTS)

    caller -> helper                        helper -> caller
    -----------------------------------     -----------------------------------
                                            ("ready",)
    ("hold", {stop_timeout, skip})     -->  ("ok", [tids held])
    ("job", JobSpec) + the core's fd   -->  ("progress", done, total)*, then
                                            ("ok", (Snapshot, file_size, record))
                                            or ("error", exception)
    ("cancel",)                        -->  the job stops, puts the target back
                                            and answers ("error", cancelled)
    ("bye",) or EOF                    -->  lets go of what it holds, exits at once

The helper runs every request on one tracer thread (tracer.run_traced), so
whatever it stopped it resumes on every path out, and EOF (the caller died)
counts as a cancel.  The caller creates, keeps and publishes the output file;
the helper only writes into the fd it is given.

"hold" is for a caller that is the parent of processes it freezes (tree.py):
the caller's threads blocked in wait4()/waitid() are held stopped inside that
syscall, so that they cannot collect the freeze's ptrace stops; the syscall
restarts when they are let go.  Only threads stopped inside the wait are kept:
a thread stopped in Python code could hold the GIL the caller's tracer needs.
While the helper dumps the caller it sends nothing: the caller cannot read.
"""

import os
import pickle
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from .. import _sys
from ..errors import HelperError
from .helperd import serve
from .tracer import CancelToken, snapcore_thread
from .wire import EXIT_CRASHED, JobSpec, recv, send

_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STARTUP_TIMEOUT = 30.0

__all__ = ["Helper", "JobSpec"]


class Helper:
    """A helper process, driven by one thread of the caller at a time."""

    def __init__(self, cancel=None):
        self.cancel = cancel if cancel is not None else CancelToken()
        self.pid = None
        self.sock = None
        self.inbox = queue.Queue()
        self._proc = None  # subprocess.Popen when spawned
        self._status = None
        self._cancel_sent = False

    # -- start and stop ------------------------------------------------------
    def start(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = ours  # from here on, close() ends whatever was started
        try:
            try:
                self.pid = self._spawn(theirs)
            finally:
                theirs.close()
            threading.Thread(
                target=self._read, args=(ours,), daemon=True, name="snapcore-helper-reader"
            ).start()
            _sys.set_ptracer(self.pid)
            reply = self._next(STARTUP_TIMEOUT)
            if reply != ("ready",):
                raise HelperError(f"snapcore's helper did not start: {reply!r}")
        except BaseException as exc:
            self.close()
            if isinstance(exc, OSError):
                raise HelperError(f"cannot start snapcore's helper process: {exc}") from exc
            raise
        return self

    def _spawn(self, theirs):
        """The helper's pid: a fork of this process when it has a single thread, else
        a fresh interpreter.  Only the caller returns from here."""
        caller = os.getpid()
        if _single_threaded():
            pid = os.fork()
            if pid == 0:  # the helper
                code = EXIT_CRASHED
                try:
                    _forked_child_fds(theirs.fileno())
                    code = serve(theirs, caller)
                finally:
                    os._exit(code)
            return pid
        code = (
            f"import sys; sys.path.insert(0, {_PKG_PARENT!r}); "
            "from snapcore.capture.helperd import main; main()"
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code, str(caller), str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        return self._proc.pid

    def close(self):
        """Let go of anything held, end and reap the helper.

        Raises nothing of its own; an interrupt (Ctrl-C, SIGTERM's exception)
        that arrives meanwhile is held until the helper is reaped, then raised.
        """
        sock, self.sock = self.sock, None
        if sock is None:
            return
        deferred = None
        for step in (lambda: send(sock, ("bye",)), lambda: sock.shutdown(socket.SHUT_WR)):
            try:
                step()
            except OSError:
                pass
            except BaseException as exc:
                deferred = deferred or exc
        while self.pid is not None and self._status is None:
            try:
                self._reap(timeout=60.0)
            except BaseException as exc:
                deferred = deferred or exc
        sock.close()
        if deferred is not None:
            raise deferred

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- requests --------------------------------------------------------------
    def hold_waiters(self, stop_timeout, skip=()):
        """Hold our threads blocked in wait4()/waitid(); returns their tids."""
        return self.call(
            ("hold", {"stop_timeout": stop_timeout, "skip": list(skip)}),
            timeout=stop_timeout + STARTUP_TIMEOUT,
        )

    def run_job(self, spec, fd, progress=None):
        """Have the helper write the core spec asks for into fd.

        Returns (Snapshot, file size to set, metadata record); raises what the
        job raised.  On KeyboardInterrupt (or any exception a signal handler
        raises) the helper is told to cancel, and this waits until it has put
        the target back before re-raising.
        """
        return self.call(("job", spec), fds=(fd,), progress=progress)

    def call(self, request, fds=(), progress=None, timeout=None):
        try:
            send(self.sock, request, fds)
        except OSError as exc:
            raise HelperError(f"snapcore's helper is gone ({exc.strerror})") from exc
        interrupted = None
        while True:
            try:
                msg = self._next(timeout)
            except HelperError:
                raise
            except BaseException as exc:  # Ctrl-C, SIGTERM: cancel, keep waiting
                if interrupted is None:
                    interrupted = exc
                self.cancel.set()
                continue
            if msg[0] == "progress":
                if progress is not None and interrupted is None:
                    progress(msg[1], msg[2])
                continue
            break
        if interrupted is not None:
            raise interrupted
        kind, value = msg
        if kind == "error":
            raise value
        return value

    def _next(self, timeout=None):
        """The next frame from the helper; HelperError if it died or timed out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                msg = self.inbox.get(timeout=0.1)
                break
            except queue.Empty:
                pass
            if self.cancel.is_set() and not self._cancel_sent:
                self._cancel_sent = True
                try:
                    send(self.sock, ("cancel",))
                except OSError:
                    pass
            if deadline is not None and time.monotonic() > deadline:
                raise HelperError("snapcore's helper did not answer in time")
        if msg is None:
            raise HelperError(f"snapcore's helper process {self._death()}")
        return msg

    def _read(self, sock):
        with snapcore_thread():  # (the caller's own snapshot shows it as snapcore's)
            self._read_messages(sock)

    def _read_messages(self, sock):
        while True:
            try:
                msg, fds = recv(sock)
            except (OSError, EOFError, pickle.UnpicklingError):
                msg, fds = None, []
            for fd in fds:
                os.close(fd)
            self.inbox.put(msg)
            if msg is None:
                return

    def _reap(self, timeout):
        """The helper's exit status (negative: killed by that signal), waiting at most
        timeout seconds before killing it."""
        deadline = time.monotonic() + timeout
        pidfd = _pidfd(self.pid)
        try:
            while self._status is None:
                self._status = self._poll()
                left = deadline - time.monotonic()
                if self._status is not None:
                    break
                if left <= 0:
                    self._kill()
                    deadline = time.monotonic() + 10.0
                    continue
                if pidfd is not None:
                    select.select([pidfd], [], [], min(left, 0.5))  # readable once it exits
                else:
                    time.sleep(0.002)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        return self._status

    def _poll(self):
        if self._proc is not None:
            return self._proc.poll()
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        return os.waitstatus_to_exitcode(status) if pid else None

    def _kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)  # the kernel detaches what it traced
        except ProcessLookupError:
            pass

    def _death(self):
        """What happened to a helper that closed the socket unasked."""
        rc = self._reap(timeout=5.0)
        err = ""
        if self._proc is not None and self._proc.stderr is not None:
            lines = self._proc.stderr.read().decode(errors="replace").strip().splitlines()
            err = f": {lines[-1]}" if lines else ""
        if rc is not None and rc < 0:
            return f"was killed by {signal.Signals(-rc).name}{err}"
        return f"exited unexpectedly (status {rc}){err}"


def _pidfd(pid):
    """A pidfd for pid (Linux 5.3+, Python 3.9+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _forked_child_fds(keep):
    """In a forked helper: hold nothing of the caller's but the socket and stderr.

    An inherited pipe end would delay its reader's EOF for as long as the
    helper lives, and the terminal's input is not the helper's to read.
    """
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _single_threaded():
    """True if this process has one thread: forking it then is safe (no lock held
    by a thread that would not exist in the child)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False
