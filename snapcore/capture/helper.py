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

The helper runs every request on one tracer thread (freeze.run_traced), so
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
import dataclasses
import os
import pickle
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass

from .. import _native, _sys
from ..arch import arch_for_regs_size, this_process
from ..elf.structs import NT_PRSTATUS
from ..errors import HelperError, SnapcoreError
from ..procfs import blocked_syscall, list_tids
from .collect import check_target
from .freeze import CancelToken, Freezer, run_traced
from .job import Job
from .publish import CoreSink

_LEN = struct.Struct("<I")
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STARTUP_TIMEOUT = 30.0
EXIT_CRASHED = 70


@dataclass
class JobSpec:
    """One core for the helper to write (the request, as the caller resolved it)."""
    pid: int
    path: str                   # for messages; the bytes go to the fd sent along
    options: object             # request.SnapshotOptions
    status: object              # procfs.Status before the freeze (None: the helper reads it)
    facts: dict                 # metadata.process_facts
    started: float              # time.time() when the snapshot began
    t0: float                   # time.monotonic() then (CLOCK_MONOTONIC is system-wide)
    progress: bool = True       # send progress frames (never while dumping the caller)


# ---------------------------------------------------------------------------
# the wire


def send(sock, obj, fds=()):
    data = pickle.dumps(obj, protocol=4)
    head = _LEN.pack(len(data))
    if fds:
        socket.send_fds(sock, [head], list(fds))
    else:
        sock.sendall(head)
    sock.sendall(data)


def _recv_exact(sock, n, fds):
    buf = bytearray()
    while len(buf) < n:
        data, anc, _, _ = sock.recvmsg(n - len(buf), socket.CMSG_SPACE(16 * 4))
        if not data:
            return None
        buf += data
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                cut = len(payload) - len(payload) % 4
                fds.extend(struct.unpack(f"<{cut // 4}i", payload[:cut]))
    return bytes(buf)


def recv(sock):
    """(message, [fds]); (None, []) at EOF."""
    fds = []
    head = _recv_exact(sock, _LEN.size, fds)
    if head is None:
        return None, fds
    body = _recv_exact(sock, _LEN.unpack(head)[0], fds)
    if body is None:
        return None, fds
    return pickle.loads(body), fds


# ---------------------------------------------------------------------------
# the caller's side


class Helper:
    """A helper process, driven by one thread of the caller at a time."""

    def __init__(self, cancel=None):
        self.cancel = cancel if cancel is not None else CancelToken()
        self.pid = None
        self.sock = None
        self.inbox = queue.Queue()
        self._proc = None           # subprocess.Popen when spawned
        self._status = None
        self._cancel_sent = False

    # -- start and stop ------------------------------------------------------
    def start(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        caller = os.getpid()
        try:
            if _single_threaded():
                self.pid = os.fork()
                if self.pid == 0:                          # the helper
                    code = EXIT_CRASHED
                    try:
                        _forked_child_fds(theirs.fileno())
                        code = serve(theirs, caller)
                    finally:
                        os._exit(code)
            else:
                code = (f"import sys; sys.path.insert(0, {_PKG_PARENT!r}); "
                        "from snapcore.capture.helper import main; main()")
                self._proc = subprocess.Popen(
                    [sys.executable, "-c", code, str(caller), str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    start_new_session=True)
                self.pid = self._proc.pid
        except OSError as exc:
            ours.close()
            raise HelperError(f"cannot start snapcore's helper process: {exc}") from exc
        finally:
            theirs.close()
        self.sock = ours
        threading.Thread(target=self._read, daemon=True, name="snapcore-helper-reader").start()
        try:
            _sys.set_ptracer(self.pid)
            reply = self._next(STARTUP_TIMEOUT)
            if reply != ("ready",):
                raise HelperError(f"snapcore's helper did not start: {reply!r}")
        except BaseException as exc:
            self.close()
            if isinstance(exc, OSError):
                raise HelperError(f"prctl(PR_SET_PTRACER) failed: {exc.strerror}") from exc
            raise
        return self

    def close(self):
        """Let go of anything held, end and reap the helper.  Never raises."""
        if self.sock is None:
            return
        try:
            send(self.sock, ("bye",))
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._reap(timeout=60.0)
        self.sock.close()
        self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- requests --------------------------------------------------------------
    def hold_waiters(self, stop_timeout, skip=()):
        """Hold our threads blocked in wait4()/waitid(); returns their tids."""
        return self.call(("hold", {"stop_timeout": stop_timeout, "skip": list(skip)}),
                         timeout=stop_timeout + STARTUP_TIMEOUT)

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
            except BaseException as exc:            # Ctrl-C, SIGTERM: cancel, keep waiting
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

    def _read(self):
        while True:
            try:
                msg, fds = recv(self.sock)
            except (OSError, EOFError, pickle.UnpicklingError):
                msg, fds = None, []
            for fd in fds:
                os.close(fd)
            self.inbox.put(msg)
            if msg is None:
                return

    def _reap(self, timeout):
        if self._status is not None:
            return self._status
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None:
                try:
                    self._status = self._proc.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    continue
                return self._status
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self._status = 0
                return 0
            if pid:
                self._status = os.waitstatus_to_exitcode(status)
                return self._status
            time.sleep(0.005)
        self._kill()
        return self._reap(10.0)

    def _kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)          # the kernel detaches what it traced
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


# ---------------------------------------------------------------------------
# the helper's side


def main(argv=None):
    """Entry point of a spawned helper: python -c '...main()' CALLER FD."""
    argv = sys.argv[1:] if argv is None else argv
    caller, fd = int(argv[0]), int(argv[1])
    code = EXIT_CRASHED
    try:
        code = serve(socket.socket(fileno=fd), caller)
    except BaseException:
        traceback.print_exc()                         # the caller reports the last line
    finally:
        os._exit(code)


def serve(sock, caller):
    """Answer the caller's requests until "bye" or EOF; returns the exit status."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    if os.getsid(0) != os.getpid():
        os.setsid()                 # (a spawned helper starts in a session of its own)
    server = _Server(sock, caller)
    threading.Thread(target=server.read, daemon=True, name="snapcore-helper-reader").start()
    try:
        run_traced(server.session, server.cancel, server.poll, name="snapcore-helper")
    except BaseException as exc:                     # reported; the caller sees EOF next
        server.send(("error", HelperError(f"snapcore's helper failed: "
                                          f"{type(exc).__name__}: {exc}")))
        return EXIT_CRASHED
    return 0


class _Server:
    def __init__(self, sock, caller):
        self.sock = sock
        self.caller = caller
        self.cancel = CancelToken()
        self.requests = queue.Queue()
        self.lock = threading.Lock()
        self.freezer = None          # holds the caller's waiting threads
        self.held = []
        self.job = None
        self.job_progress = False

    def send(self, msg):
        with self.lock:
            try:
                send(self.sock, msg)
            except OSError:
                self.cancel.set()

    def read(self):
        while True:
            try:
                msg, fds = recv(self.sock)
            except (OSError, EOFError, pickle.UnpicklingError):
                msg, fds = None, []
            if msg is None or msg == ("cancel",):
                self.cancel.set()                     # EOF: the caller is gone
            if msg != ("cancel",):
                self.requests.put((msg, fds))
            if msg is None:
                return

    def poll(self):
        job = self.job
        if job is not None and self.job_progress and job.total:
            self.send(("progress", job.done(), job.total))

    def session(self):
        """On the tracer thread: every request, in order."""
        try:
            self.send(("ready",))
            while True:
                msg, fds = self.requests.get()
                if msg is None or msg[0] == "bye":
                    return
                try:
                    if msg[0] == "hold":
                        reply = ("ok", self.hold(**msg[1]))
                    elif msg[0] == "job":
                        reply = ("ok", self.run_job(msg[1], fds))
                    else:
                        reply = ("error", HelperError(f"unknown request {msg[0]!r}"))
                except SnapcoreError as exc:
                    reply = ("error", exc)
                except Exception as exc:
                    reply = ("error", HelperError(f"snapcore's helper: "
                                                  f"{type(exc).__name__}: {exc}"))
                finally:
                    for fd in fds:
                        os.close(fd)
                self.send(reply)
        finally:
            if self.freezer is not None:
                self.freezer.resume()

    def hold(self, stop_timeout, skip):
        if self.freezer is None:
            self.freezer = Freezer(self.caller, stop_timeout, self.cancel)
        waits = this_process().wait_syscalls
        waiting = [t for t in list_tids(self.caller)
                   if t not in set(skip) and blocked_syscall(self.caller, t) in waits]
        self.held = self.freezer.hold(waiting, keep=_stopped_in_wait)
        return self.held

    def run_job(self, spec, fds):
        if len(fds) != 1:
            raise HelperError(f"a job needs one file descriptor, got {len(fds)}")
        held = None
        status = spec.status
        if spec.pid == self.caller:
            held, self.freezer = self.freezer, None
            status = check_target(self.caller)       # its threads wait for us now
            if status.state == "t" and self.caller in self.held:
                # the main thread is one we hold: it was sleeping in waitpid()
                status = dataclasses.replace(status, state="S")
        job = Job(spec.pid, CoreSink(os.dup(fds[0]), spec.path), status, spec.options,
                  spec.facts, spec.started, self.cancel)
        self.job, self.job_progress = job, spec.progress
        try:
            snap = job.run(held=held)
            self.poll()                                  # the last word: all of it copied
            file_size, record = job.finish(snap, time.monotonic() - spec.t0)
        finally:
            self.job = None
            os.close(job.out.fd)
        return snap, file_size, record


def _stopped_in_wait(tid):
    """True if tid is stopped inside (or at the exit of) a wait syscall.

    orig_ax holds the syscall number while a thread is in a syscall and a
    negative value when it entered the kernel through an interrupt, i.e. was
    stopped in user code (where it might hold the GIL).
    """
    try:
        regs = _native.getregset(tid, NT_PRSTATUS)
    except _native.SyscallError:
        return False
    arch = arch_for_regs_size(len(regs))
    if arch is None:
        return False
    r = arch.regs(regs)
    return r.get("orig_rax", r.get("orig_eax")) in arch.wait_syscalls
