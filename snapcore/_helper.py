"""The helper process of selfsnap.py: it traces its caller (its parent).

    python -c "...; from snapcore._helper import main; main()" CALLER_PID

Requests arrive on stdin and replies leave on stdout, as selfsnap.send/recv
frames; every ptrace call is made on one tracer thread (run_traced) while the
main thread only waits and turns SIGTERM into a cancel.
"""
import dataclasses
import os
import signal
import sys

from . import _native, _sys
from .arch import arch_for_regs_size
from .elf.structs import NT_PRSTATUS
from .errors import SnapcoreError
from .procfs import blocked_syscall, list_tids
from .selfsnap import HelperError, recv, send
from .snapshot import check_target, write_frozen
from .tracer import CancelToken, Freezer, run_traced

# wait4 and waitid (x86_64), waitpid/wait4/waitid (i386)
_WAIT_SYSCALLS = {"x86_64": {61, 247}, "i386": {7, 114, 284}}


class _Terminated(BaseException):
    pass


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
    nr = r.get("orig_rax", r.get("orig_eax"))
    return nr in _WAIT_SYSCALLS[arch.name]


class _Session:
    def __init__(self, caller, cancel):
        self.caller = caller
        self.cancel = cancel
        self.freezer = None
        self.held = []

    def run(self):
        try:
            send(1, ("ready",))
            while True:
                msg = recv(0, None, self.cancel)
                if msg is None or msg[0] == "bye":
                    return 0
                op, kw = msg
                try:
                    if op == "hold":
                        value = self.hold(kw)
                    elif op == "dump":
                        value = self.dump(kw)
                    else:
                        raise HelperError(f"unknown request {op!r}")
                    reply = ("ok", value)
                except SnapcoreError as exc:
                    reply = ("error", exc)
                except Exception as exc:
                    reply = ("error", HelperError(f"helper: {type(exc).__name__}: {exc}"))
                send(1, reply)
        finally:
            if self.freezer is not None:
                self.freezer.resume()

    def hold(self, kw):
        if self.freezer is None:
            self.freezer = Freezer(self.caller, kw["stop_timeout"], self.cancel)
        skip = set(kw["skip"])
        # the caller runs the same interpreter as we do: the host's syscall numbers
        waits = _WAIT_SYSCALLS["i386" if sys.maxsize < 2**32 else "x86_64"]
        waiting = [t for t in list_tids(self.caller)
                   if t not in skip and blocked_syscall(self.caller, t) in waits]
        self.held = self.freezer.hold(waiting, keep=_stopped_in_wait)
        return self.held

    def dump(self, kw):
        status = check_target(self.caller)
        if status.state == "t" and self.caller in self.held:
            # the main thread is one we hold: it was sleeping in waitpid()
            status = dataclasses.replace(status, state="S")
        fr = self.freezer or Freezer(self.caller, kw["stop_timeout"], self.cancel)
        self.freezer = None
        try:
            frozen = fr.freeze()
            snap = write_frozen(self.caller, kw["path"], fr, frozen, status,
                                force=kw["force"], coredump_filter=kw["coredump_filter"],
                                cancel=self.cancel, writer_thread=kw["writer_thread"],
                                buffer_size=kw["buffer_size"])
        finally:
            fr.resume()
        snap.pause_time = fr.pause_seconds
        return snap


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    caller = int(argv[0])
    _sys.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != caller:
        return 3                       # the caller is already gone

    def on_term(signum, frame):
        raise _Terminated()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the caller decides, with SIGTERM
    cancel = CancelToken()
    try:
        return run_traced(_Session(caller, cancel).run, cancel, name="snapcore-helper")
    except _Terminated:
        return 143


if __name__ == "__main__":
    sys.exit(main())
