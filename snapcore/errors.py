"""The exceptions snapcore raises.

Every error a user can cause or meet is one of these; each carries a short
message (what went wrong) and, where there is one, ``advice`` (what to do).
They subclass the matching builtin too, so ``except ProcessLookupError`` or
``except PermissionError`` work as expected.

    SnapcoreError
     +-- TargetError                      (pid)
     |    +-- NoSuchProcess               ProcessLookupError
     |    |    +-- TargetExited           the target went away mid-snapshot
     |    +-- ZombieProcess
     |    +-- KernelThread
     |    +-- AccessDenied                PermissionError
     |    +-- AlreadyTraced               (tracer_pid, tracer_comm)
     |    +-- UnsupportedTarget
     |    +-- ThreadStopTimeout           (tids)
     +-- OutputError                      OSError (path)
     |    +-- OutputExists                FileExistsError
     +-- SnapshotCancelled
     +-- CoreTooLarge                     (limit, minimum)
     +-- InvalidRequest                   ValueError: options that cannot be honoured
     +-- MissingDependency                ImportError (an optional package)
     +-- SyscallError                     OSError (syscall, tid, errno)
     +-- ShimUnavailable                  ImportError
     +-- HelperError                      snapcore's helper process failed
     +-- CoreFormatError                  a file given as a core is not one (path)
     |    +-- BundleFormatError           ... as a bundle: not one, damaged, or unsafe
     +-- ProcFormatError                  /proc said something snapcore cannot parse

``exit_status(exc)`` is the one table from errors to the command line's exit
statuses (documented in docs/cli.md): 2 for a request that cannot be honoured,
130/143 for SIGINT/SIGTERM, 1 for every other failure.
"""

import errno as _errno
import os

from ._sys import yama_scope
from .units import human as _human


class SnapcoreError(Exception):
    """Base class of every snapcore error."""

    advice = None

    def __str__(self):
        msg = Exception.__str__(self)
        return f"{msg}; {self.advice}" if self.advice else msg

    def __reduce__(self):
        # constructors take other arguments than .args: rebuild from state so
        # errors cross process boundaries (multiprocessing, pytest-xdist)
        state = dict(self.__dict__)
        if isinstance(self, OSError):
            state["errno"] = self.errno
        return _rebuild, (type(self), self.args, state)


def _rebuild(cls, args, state):
    obj = cls.__new__(cls)
    Exception.__init__(obj, *args)
    for k, v in state.items():
        setattr(obj, k, v)
    return obj


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class TargetError(SnapcoreError):
    def __init__(self, pid, msg):
        super().__init__(msg)
        self.pid = pid


class NoSuchProcess(TargetError, ProcessLookupError):
    def __init__(self, pid, msg=None):
        super().__init__(pid, msg or f"no process with pid {pid}")


class TargetExited(NoSuchProcess):
    def __init__(self, pid):
        super().__init__(pid, f"process {pid} exited during the snapshot")


class ZombieProcess(TargetError):
    def __init__(self, pid):
        super().__init__(pid, f"process {pid} is a zombie (it has exited and awaits its parent)")


class KernelThread(TargetError):
    def __init__(self, pid, comm=""):
        name = f" ({comm})" if comm else ""
        super().__init__(pid, f"pid {pid}{name} is a kernel thread; it has no user memory to dump")


class AccessDenied(TargetError, PermissionError):
    def __init__(self, pid, detail="ptrace not permitted", advice=None):
        super().__init__(pid, f"cannot trace process {pid}: {detail}")
        self.advice = advice if advice is not None else _ptrace_advice()


class AlreadyTraced(TargetError):
    def __init__(self, pid, tracer_pid, tracer_comm=""):
        who = f"{tracer_pid} ({tracer_comm})" if tracer_comm else f"{tracer_pid}"
        super().__init__(pid, f"process {pid} is already traced by PID {who}")
        self.tracer_pid = tracer_pid
        self.tracer_comm = tracer_comm
        self.advice = "detach the debugger or tracer (or let it finish), then retry"


class UnsupportedTarget(TargetError):
    pass


class ThreadStopTimeout(TargetError):
    def __init__(self, pid, tids, timeout):
        listed = ", ".join(str(t) for t in sorted(tids)[:8])
        more = "" if len(tids) <= 8 else f" and {len(tids) - 8} more"
        super().__init__(
            pid,
            f"thread(s) {listed}{more} of process {pid} did not stop within {timeout:g}s "
            "(uninterruptible sleep?); the target was resumed",
        )
        self.tids = sorted(tids)
        self.timeout = timeout
        self.advice = "retry later, or raise the bound with --stop-timeout"


class OutputError(SnapcoreError, OSError):
    def __init__(self, path, msg, err=None):
        SnapcoreError.__init__(self, msg)
        self.path = path
        self.errno = err

    def __str__(self):
        return SnapcoreError.__str__(self)


class OutputExists(OutputError, FileExistsError):
    def __init__(self, path):
        super().__init__(path, f"{path} already exists", _errno.EEXIST)
        self.advice = "choose another path or pass --force (force=True) to replace it"


class SnapshotCancelled(SnapcoreError):
    def __init__(self, msg="snapshot cancelled; the target was resumed"):
        super().__init__(msg)


class CoreTooLarge(SnapcoreError):
    """max_size is below what the smallest useful core of the target needs."""

    def __init__(self, limit, minimum):
        super().__init__(
            f"a core of at most {_human(limit)} cannot hold this process's "
            f"thread stacks, ELF headers and backtrace data "
            f"({_human(minimum)} needed); the target was resumed"
        )
        self.limit = limit
        self.minimum = minimum
        self.advice = f"raise --max-size to at least {_human(minimum)}"


class InvalidRequest(SnapcoreError, ValueError):
    """Options that cannot be honoured (alone, together, or on this path).

    Raised before anything is touched: no process was stopped, no file created.
    """


class MissingDependency(SnapcoreError, ImportError):
    """An optional package a feature needs is not installed."""

    def __init__(self, feature, package, extra):
        super().__init__(f"{feature} needs the Python package '{package}', which is not installed")
        self.advice = f"install it with: pip install 'snapcore[{extra}]'"


class SyscallError(SnapcoreError, OSError):
    """A system call failed in a way no more specific error describes."""

    def __init__(self, syscall, err, tid=None, detail=""):
        where = f" on {tid}" if tid is not None else ""
        extra = f" ({detail})" if detail else ""
        SnapcoreError.__init__(self, f"{syscall}{where} failed: {os.strerror(err)}{extra}")
        self.errno = err
        self.syscall = syscall
        self.tid = tid

    def __str__(self):
        return SnapcoreError.__str__(self)


class ShimUnavailable(SnapcoreError, ImportError):
    def __init__(self, detail):
        super().__init__(f"snapcore's compiled shim is not available ({detail})")
        self.advice = "reinstall snapcore with 'pip install .' so the C shim is built"


class HelperError(SnapcoreError):
    """snapcore's helper process failed (it crashed, or could not be started)."""


class CoreFormatError(SnapcoreError):
    """A file given as a core (or bundle) is not one snapcore can read."""

    def __init__(self, path, detail):
        super().__init__(f"{path}: {detail}")
        self.path = path


class BundleFormatError(CoreFormatError):
    """A file given as a bundle is not one, is damaged (truncated, a sha256 that
    differs from its manifest), or holds what snapcore will not unpack (links,
    paths that leave its directory).  Nothing of it was left unpacked."""


class ProcFormatError(TargetError):
    """/proc/PID/... held text snapcore does not understand (a newer kernel?)."""

    def __init__(self, pid, what, detail):
        super().__init__(pid, f"cannot parse {what}: {detail}")
        self.advice = "please report this with the file's contents and `uname -r`"


class LiveUnavailable(SnapcoreError):
    """Live mode cannot be used on this target; a normal snapshot is taken instead."""


def exit_status(exc):
    """The command line's exit status for an exception that ended a command."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_SIGINT
    if isinstance(exc, InvalidRequest):
        return EXIT_USAGE
    return EXIT_FAILED


def _ptrace_advice():
    scope = yama_scope()
    if scope is not None and scope >= 1:
        return (
            f"kernel.yama.ptrace_scope is {scope}: run as root or with CAP_SYS_PTRACE, "
            "or lower it with 'sysctl kernel.yama.ptrace_scope=0'"
        )
    return "run as the target's user or as root (CAP_SYS_PTRACE)"
