"""The only importer of the compiled shim (snapcore._shim).

Each wrapper calls one shim function and turns a negative return (-errno) into
a SyscallError naming the syscall and the thread, so the rest of snapcore
deals in Python values and exceptions only.  Callers that expect a particular
errno (ESRCH while threads come and go) catch SyscallError and test .errno.
"""

import errno
import threading

from .errors import ShimUnavailable, SyscallError

ABI_VERSION = 7

try:
    from ._shim import ffi, lib
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    ffi = lib = None
    _IMPORT_ERROR = str(exc)
else:
    _IMPORT_ERROR = None
    if lib.sc_abi_version() != ABI_VERSION:
        ffi = lib = None
        _IMPORT_ERROR = "it was built from another version of csrc/snapcore.h"

# ptrace constants (include/uapi/linux/ptrace.h)
PTRACE_O_TRACESYSGOOD = 0x01
PTRACE_O_TRACEFORK = 0x02
PTRACE_O_TRACEVFORK = 0x04
PTRACE_O_TRACECLONE = 0x08
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEEXIT = 0x40
PTRACE_O_EXITKILL = 0x100000
PTRACE_EVENT_FORK = 1
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_STOP = 128

WAIT_PENDING = -1
WAIT_GONE = -2


def require():
    """Raise ShimUnavailable unless the compiled shim is importable."""
    if lib is None:
        raise ShimUnavailable(_IMPORT_ERROR)
    return lib


def _check(ret, syscall, tid=None):
    if ret < 0:
        raise SyscallError(syscall, -ret, tid)
    return ret


def seize(tid, options=0):
    _check(require().sc_seize(tid, options), "ptrace(PTRACE_SEIZE)", tid)


def interrupt(tid):
    _check(require().sc_interrupt(tid), "ptrace(PTRACE_INTERRUPT)", tid)


def detach(tid, sig=0):
    _check(require().sc_detach(tid, sig), "ptrace(PTRACE_DETACH)", tid)


def cont(tid, sig=0):
    _check(require().sc_cont(tid, sig), "ptrace(PTRACE_CONT)", tid)


def singlestep(tid, sig=0):
    _check(require().sc_singlestep(tid, sig), "ptrace(PTRACE_SINGLESTEP)", tid)


def setoptions(tid, options):
    _check(require().sc_setoptions(tid, options), "ptrace(PTRACE_SETOPTIONS)", tid)


def geteventmsg(tid):
    msg = ffi.new("unsigned long *")
    _check(require().sc_geteventmsg(tid, msg), "ptrace(PTRACE_GETEVENTMSG)", tid)
    return int(msg[0])


_REGSET_BUF = 64 * 1024
_local = threading.local()


def getregset(tid, note_type):
    """Return the bytes PTRACE_GETREGSET filled for note_type."""
    n, buf = _getregset(tid, note_type)
    if n < 0:  # (the message is made only then: calls per thread while frozen)
        raise SyscallError(f"ptrace(PTRACE_GETREGSET, {note_type:#x})", -n, tid)
    return ffi.buffer(buf, n)[:]


def getregset_or_none(tid, note_type):
    """getregset(), or None where the kernel refuses it (a regset not active for
    this thread: ENODEV, ENXIO...); no exception for the common refusal, asked for
    several regsets of every thread while the target is frozen."""
    n, buf = _getregset(tid, note_type)
    return None if n < 0 else ffi.buffer(buf, n)[:]


def _getregset(tid, note_type):
    """(bytes filled or -errno, the buffer): one buffer per calling thread, reused
    (5 calls per target thread add up)."""
    buf = getattr(_local, "regset_buf", None)
    if buf is None:
        buf = _local.regset_buf = ffi.new("char[]", _REGSET_BUF)
    return require().sc_getregset(tid, note_type, buf, _REGSET_BUF), buf


_FACTS = 7  # SC_THREAD_FACTS, in enum sc_fact's order
_U64 = (1 << 64) - 1
_noclear = ffi.new_allocator(should_clear_after_alloc=False) if ffi is not None else None


def read_task_files(pid, tids, names, bufsize=1 << 20, max_file=16 << 10):
    """sc_read_task_files() (see csrc/snapcore.h): {tid: [bytes, or -errno (an int)
    for each of names]}; -EFBIG marks a file longer than max_file, which the caller
    reads itself."""
    lib = require()
    packed = b"".join(n.encode() + b"\0" for n in names)
    nnames = len(names)
    bufsize = max(bufsize, nnames * max_file)
    buf = _noclear("char[]", bufsize)
    raw = ffi.buffer(buf, bufsize)
    out = {}
    todo = list(tids)
    while todo:
        lens = ffi.new("long[]", len(todo) * nnames)
        done = lib.sc_read_task_files(
            pid, ffi.new("int[]", todo), len(todo), packed, nnames, buf, bufsize, max_file, lens
        )
        if done <= 0:
            raise SyscallError("sc_read_task_files", -done if done < 0 else errno.ENOMEM)
        got = ffi.unpack(lens, done * nnames)
        at = 0
        for i in range(done):
            files = []
            for k in got[i * nnames : (i + 1) * nnames]:
                if k >= 0:
                    files.append(raw[at : at + k])
                    at += k
                else:
                    files.append(k)
            out[todo[i]] = files
        todo = todo[done:]
    return out


def read_threads(pid, tids, types, caps):
    """sc_read_threads() (see csrc/snapcore.h) for tids, which must be stopped
    tracees of the calling thread: per tid, in order,
    (status_err, stat_err, state, sigpnd, sigblk, utime, stime, regsets) with
    state a letter (None if status_err) and each regset its bytes or -errno (an
    int).  A regset that filled its cap may be cut short: the caller reads it
    again whole."""
    ntypes = len(types)
    slot = sum(caps)
    n = len(tids)
    facts = ffi.new("int64_t[]", max(1, n * _FACTS))
    buf = _noclear("char[]", max(1, n * slot))  # the kernel fills what is read
    lens = ffi.new("long[]", max(1, n * ntypes))
    rc = require().sc_read_threads(
        pid,
        ffi.new("int[]", list(tids)),
        n,
        ffi.new("unsigned int[]", list(types)),
        ffi.new("size_t[]", list(caps)),
        ntypes,
        facts,
        buf,
        slot,
        lens,
    )
    if rc < 0:
        raise SyscallError("sc_read_threads", -rc)
    got = ffi.unpack(lens, n * ntypes)
    raw = ffi.buffer(buf, n * slot)
    offsets = [0]
    for cap in caps[:-1]:
        offsets.append(offsets[-1] + cap)
    out = []
    f = ffi.unpack(facts, n * _FACTS)
    for i in range(n):
        base = i * slot
        regsets = [
            raw[base + off : base + off + k] if k >= 0 else k
            for off, k in zip(offsets, got[i * ntypes : (i + 1) * ntypes])
        ]
        status_err, stat_err, state, pnd, blk, utime, stime = f[i * _FACTS : (i + 1) * _FACTS]
        out.append(
            (
                status_err,
                stat_err,
                chr(state) if not status_err else None,
                pnd & _U64,
                blk & _U64,
                utime,
                stime,
                regsets,
            )
        )
    return out


def setregset(tid, note_type, data):
    _check(
        require().sc_setregset(tid, note_type, data, len(data)),
        f"ptrace(PTRACE_SETREGSET, {note_type:#x})",
        tid,
    )


def getsiginfo(tid):
    buf = ffi.new("char[]", 128)
    _check(require().sc_getsiginfo(tid, buf), "ptrace(PTRACE_GETSIGINFO)", tid)
    return ffi.buffer(buf, 128)[:]


def setsiginfo(tid, data):
    _check(require().sc_setsiginfo(tid, data), "ptrace(PTRACE_SETSIGINFO)", tid)


def wait_many(tids, statuses, timeout, noreap_pid=0):
    """Wait until every tid whose status is WAIT_PENDING reports, or timeout (s).

    ``statuses`` is a list updated in place.  Returns how many are still pending.
    """
    n = len(tids)
    if n == 0:
        return 0
    c_tids = ffi.new("int[]", list(tids))
    c_st = ffi.new("int[]", list(statuses))
    r = _check(require().sc_wait_many(c_tids, c_st, n, int(timeout * 1000), noreap_pid), "waitpid")
    statuses[:] = list(c_st)
    return r


def readv(pid, addr, length):
    """process_vm_readv of one range; returns the bytes read (maybe fewer)."""
    buf = ffi.new("char[]", length)
    a = ffi.new("uint64_t[1]", [addr])
    n = ffi.new("uint64_t[1]", [length])
    got = _check(require().sc_readv(pid, a, n, 1, buf, length), "process_vm_readv", pid)
    return ffi.buffer(buf, got)[:]


def pread(fd, length, offset):
    buf = ffi.new("char[]", length)
    got = _check(require().sc_pread(fd, buf, length, offset), "pread")
    return ffi.buffer(buf, got)[:]


def cpuid(leaf, subleaf=0):
    out = ffi.new("uint32_t[4]")
    _check(require().sc_cpuid(leaf, subleaf, out), "cpuid")
    return tuple(out)


def is_gone(exc):
    """True if a SyscallError means the thread no longer exists for us."""
    return isinstance(exc, SyscallError) and exc.errno in (errno.ESRCH, errno.ECHILD)
