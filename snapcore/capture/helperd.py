"""The helper process's side (see helper.py for what it is for and the messages).

main()          entry point of a spawned helper (python -c ... CALLER FD)
serve(sock)     forked or spawned: answer the caller's requests on one tracer
                thread until "bye" or EOF, then return (the caller's side
                calls os._exit right after)
"""

import dataclasses
import os
import pickle
import queue
import signal
import socket
import sys
import threading
import time
import traceback

from .. import _native
from ..arch import arch_for_regs_size, this_process
from ..elf.structs import NT_PRSTATUS
from ..errors import HelperError, SnapcoreError
from ..procfs import blocked_syscall, list_tids
from .collect import check_target
from .freeze import Freezer
from .job import Job
from .publish import CoreSink
from .tracer import CancelToken, run_traced
from .wire import EXIT_CRASHED, recv, send


def main(argv=None):
    """Entry point of a spawned helper: python -c '...main()' CALLER FD."""
    argv = sys.argv[1:] if argv is None else argv
    caller, fd = int(argv[0]), int(argv[1])
    code = EXIT_CRASHED
    try:
        code = serve(socket.socket(fileno=fd), caller)
    except BaseException:
        traceback.print_exc()  # the caller reports the last line
    finally:
        os._exit(code)


def serve(sock, caller):
    """Answer the caller's requests until "bye" or EOF; returns the exit status."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    if os.getsid(0) != os.getpid():
        os.setsid()  # (a spawned helper starts in a session of its own)
    server = _Server(sock, caller)
    threading.Thread(target=server.read, daemon=True, name="snapcore-helper-reader").start()
    try:
        run_traced(server.session, server.cancel, server.poll, name="snapcore-helper")
    except BaseException as exc:  # reported; the caller sees EOF next
        server.send(
            ("error", HelperError(f"snapcore's helper failed: {type(exc).__name__}: {exc}"))
        )
        return EXIT_CRASHED
    return 0


class _Server:
    def __init__(self, sock, caller):
        self.sock = sock
        self.caller = caller
        self.cancel = CancelToken()
        self.requests = queue.Queue()
        self.lock = threading.Lock()
        self.freezer = None  # holds the caller's waiting threads
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
                self.cancel.set()  # EOF: the caller is gone
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
                    reply = (
                        "error",
                        HelperError(f"snapcore's helper: {type(exc).__name__}: {exc}"),
                    )
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
        waiting = [
            t
            for t in list_tids(self.caller)
            if t not in set(skip) and blocked_syscall(self.caller, t) in waits
        ]
        self.held = self.freezer.hold(waiting, keep=_stopped_in_wait)
        return self.held

    def run_job(self, spec, fds):
        if len(fds) != 1:
            raise HelperError(f"a job needs one file descriptor, got {len(fds)}")
        held = None
        status = spec.status
        if spec.pid == self.caller:
            held, self.freezer = self.freezer, None
            status = check_target(self.caller)  # its threads wait for us now
            if status.state == "t" and self.caller in self.held:
                # the main thread is one we hold: it was sleeping in waitpid()
                status = dataclasses.replace(status, state="S")
        job = Job(
            spec.pid,
            CoreSink(os.dup(fds[0]), spec.path),
            status,
            spec.options,
            spec.facts,
            spec.started,
            self.cancel,
        )
        self.job, self.job_progress = job, spec.progress
        try:
            snap = job.run(held=held)
            self.poll()  # the last word: all of it copied
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
    return r[arch.syscall_nr_reg] in arch.wait_syscalls
