"""Reading /proc: pure parsers (text -> frozen dataclasses) and the file reads.

The parsers take the text of one /proc file and raise ValueError on anything
they do not understand: a silently skipped mapping is a silently wrong core.
``read_*`` helpers do the I/O and turn errno into snapcore's errors.
"""

import errno
import os
import re
import struct
from dataclasses import dataclass

from .errors import AccessDenied, NoSuchProcess, ProcFormatError

PF_KTHREAD = 0x00200000


# ---------------------------------------------------------------------------
# /proc/PID/stat


@dataclass(frozen=True)
class Stat:
    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    flags: int
    utime: int  # clock ticks
    stime: int
    cutime: int
    cstime: int
    nice: int
    num_threads: int
    starttime: int
    arg_start: int  # 0 unless we may read the target's memory
    arg_end: int


def parse_stat(text):
    """Parse /proc/PID/stat (or task/TID/stat).  comm may hold spaces and ')'."""
    lpar = text.index("(")
    rpar = text.rindex(")")
    pid = int(text[:lpar])
    comm = text[lpar + 1 : rpar]
    rest = text[rpar + 2 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3]
    if len(rest) < 47:
        raise ValueError(f"short stat line ({len(rest) + 2} fields)")

    def f(n):
        return int(rest[n - 3])

    return Stat(
        pid=pid,
        comm=comm,
        state=rest[0],
        ppid=f(4),
        pgrp=f(5),
        session=f(6),
        flags=f(9),
        utime=f(14),
        stime=f(15),
        cutime=f(16),
        cstime=f(17),
        nice=f(19),
        num_threads=f(20),
        starttime=f(22),
        arg_start=f(48),
        arg_end=f(49),
    )


# ---------------------------------------------------------------------------
# /proc/PID/status


@dataclass(frozen=True)
class Status:
    name: str
    state: str  # letter
    tgid: int
    ppid: int
    tracer_pid: int
    uid: tuple  # real, effective, saved, fs
    gid: tuple
    sig_pnd: int  # thread-private pending
    shd_pnd: int  # shared pending
    sig_blk: int
    seccomp: int
    kthread: bool
    threads: int
    # the ids in every pid namespace from the reader's down to the task's own
    # (NSpid/NSpgid/NSsid): one entry each when the task is in the reader's
    nspid: tuple = ()
    nspgid: tuple = ()
    nssid: tuple = ()

    @property
    def own_ns_ids(self):
        """(pid, pgrp, sid) in the task's own pid namespace, as task_*_vnr() gives
        them to the kernel's dumper (0 where the group or session leader is outside
        that namespace: /proc prints 0 there too); None without NSpid."""
        if not self.nspid or not self.nspgid or not self.nssid:
            return None
        return self.nspid[-1], self.nspgid[-1], self.nssid[-1]


_STATUS_LINE = re.compile(r"^([^:\n]+):[ \t]*(.*?)[ \t]*$", re.M)


def parse_status(text):
    fields = dict(_STATUS_LINE.findall(text))

    def ints(key):
        return tuple(int(x) for x in fields.get(key, "").split())

    try:
        return Status(
            name=fields.get("Name", ""),
            state=fields["State"][:1],
            tgid=int(fields["Tgid"]),
            ppid=int(fields["PPid"]),
            tracer_pid=int(fields["TracerPid"]),
            uid=ints("Uid"),
            gid=ints("Gid"),
            sig_pnd=int(fields.get("SigPnd", "0"), 16),
            shd_pnd=int(fields.get("ShdPnd", "0"), 16),
            sig_blk=int(fields.get("SigBlk", "0"), 16),
            seccomp=int(fields.get("Seccomp", "0")),
            kthread=fields.get("Kthread", "0") == "1",
            threads=int(fields.get("Threads", "1")),
            nspid=ints("NSpid"),
            nspgid=ints("NSpgid"),
            nssid=ints("NSsid"),
        )
    except KeyError as exc:
        raise ValueError(f"status lacks {exc}") from None


_THREAD_STATUS = re.compile(
    r"^State:\s+(\S).*?^SigPnd:\s+([0-9a-f]+)\s*$.*?^SigBlk:\s+([0-9a-f]+)\s*$", re.M | re.S
)


def parse_thread_status(text):
    """(state letter, SigPnd, SigBlk) of task/TID/status: what each NT_PRSTATUS needs.

    Found by str.find, not parse_status's dict: it runs once per thread while the
    target is frozen (1000 threads: 1 ms, against 6 ms for a regex).
    """
    return (
        _status_field(text, "\nState:"),
        int(_status_field(text, "\nSigPnd:"), 16),
        int(_status_field(text, "\nSigBlk:"), 16),
    )


def _status_field(text, key):
    """The first word after key ("\nName:") in status text; ValueError if absent."""
    at = text.index(key) + len(key)
    end = text.find("\n", at)
    return text[at : end if end >= 0 else len(text)].split()[0]


def parse_thread_times(text):
    """(state letter, utime, stime) of task/TID/stat: the fields a thread's note
    needs, without parsing the other 49 (see parse_stat)."""
    rest = text[text.rindex(")") + 2 :].split(None, 13)
    if len(rest) < 14:
        raise ValueError(f"short stat line ({len(rest) + 2} fields)")
    return rest[0], int(rest[11]), int(rest[12])


# ---------------------------------------------------------------------------
# small files


def parse_cmdline(raw):
    """/proc/PID/cmdline bytes -> argv as a list of str.

    A process that rewrote its title (setproctitle, PostgreSQL's "postgres:
    checkpointer") leaves the rest of its argument area as NUL padding: those
    empty trailing entries are not arguments and are dropped.
    """
    args = raw.split(b"\0")
    while args and not args[-1]:
        args.pop()
    return [a.decode("utf-8", "surrogateescape") for a in args]


def parse_coredump_filter(text):
    return int(text.strip(), 16)


def parse_auxv(data, word_size):
    """Return [(a_type, a_val)] up to and including AT_NULL."""
    fmt = "<QQ" if word_size == 8 else "<II"
    step = 2 * word_size
    out = []
    for off in range(0, len(data) - step + 1, step):
        t, v = struct.unpack_from(fmt, data, off)
        out.append((t, v))
        if t == 0:
            break
    return out


def auxv_map(data, word_size):
    """{a_type: a_val}, the first value of each type (as readers take them)."""
    out = {}
    for t, v in parse_auxv(data, word_size):
        out.setdefault(t, v)
    return out


def auxv_through_null(data, word_size):
    """The auxv bytes up to and including the AT_NULL entry (fill_auxv_note()).

    /proc/PID/auxv looks for the end in 64-bit units, so for an ia32 process
    (8-byte entries) it returns words past the AT_NULL entry; the kernel's own
    core stops at AT_NULL in the process's word size.
    """
    entries = parse_auxv(data, word_size)
    if not entries or entries[-1][0] != 0:
        raise ValueError(f"auxv of {len(data)} bytes has no AT_NULL entry")
    return data[: len(entries) * 2 * word_size]


# ---------------------------------------------------------------------------
# I/O with error translation


def translate(pid, exc, what):
    if exc.errno in (errno.ENOENT, errno.ESRCH):
        return NoSuchProcess(pid)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(pid, f"cannot read {what}")
    return exc


def read_bytes(pid, rel, tid=None):
    path = f"/proc/{pid}/task/{tid}/{rel}" if tid is not None else f"/proc/{pid}/{rel}"
    try:
        return read_path(path, one_record=rel in _ONE_RECORD)
    except OSError as exc:
        raise translate(pid, exc, path) from exc


def read_path(path, one_record=False):
    """The bytes of a /proc file (OSError as raised).  os.open/os.read, not open():
    half the cost, which counts for the files read once per thread.  one_record:
    the file is a single_open() seq file (stat, status), whose first read of a
    buffer larger than the record returns all of it (no read for the EOF)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        if one_record:
            data = os.read(fd, _READ_SIZE)
            if len(data) < _READ_SIZE:
                return data
            chunks.append(data)
        while True:
            more = os.read(fd, _READ_SIZE)
            if not more:
                break
            chunks.append(more)
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_READ_SIZE = 64 * 1024
_ONE_RECORD = frozenset(("stat", "status"))  # a few kB, printed at once by the kernel


def read_text(pid, rel, tid=None):
    return read_bytes(pid, rel, tid).decode("utf-8", "surrogateescape")


def parsed(pid, parser, rel, tid=None):
    """parser(text of /proc/PID[/task/TID]/rel), with its ValueError translated.

    Text that does not parse is most often a process that vanished while it
    was read (an empty file): that is NoSuchProcess; anything else is a
    ProcFormatError naming the file.
    """
    text = read_text(pid, rel, tid)
    try:
        return parser(text)
    except (ValueError, IndexError) as exc:
        where = f"/proc/{pid}/task/{tid}/{rel}" if tid is not None else f"/proc/{pid}/{rel}"
        if not text or not os.path.exists(where):
            raise NoSuchProcess(pid) from None
        raise ProcFormatError(pid, where, str(exc)) from None


def read_stat(pid, tid=None):
    return parsed(pid, parse_stat, "stat", tid)


def read_status(pid, tid=None):
    return parsed(pid, parse_status, "status", tid)


def list_tids(pid):
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError as exc:
        raise translate(pid, exc, f"/proc/{pid}/task") from exc


def read_coredump_filter(pid):
    try:
        return parse_coredump_filter(read_text(pid, "coredump_filter"))
    except (OSError, ValueError):
        return 0x33  # the kernel default


def tracer_process(tracer_tid):
    """TracerPid names the tracing *thread*; return (its process id, that process's comm)."""
    try:
        tgid = parse_status(read_text(tracer_tid, "status")).tgid
    except Exception:
        tgid = tracer_tid
    return tgid, comm_of(tgid)


def is_own_thread(tid):
    """True if tid is a thread of the calling process (TracerPid names a thread)."""
    return os.path.exists(f"/proc/self/task/{tid}")


def comm_of(pid):
    try:
        return read_text(pid, "comm").strip()
    except Exception:
        return ""


def read_cmdline(pid):
    """argv as a list of str (empty for zombies and kernel threads)."""
    return parse_cmdline(read_bytes(pid, "cmdline"))


def read_exe(pid):
    """The executable's path, or None when it cannot be read."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def blocked_syscall(pid, tid):
    """The number of the syscall thread tid is blocked in, or None (running / unknown)."""
    try:
        text = read_text(pid, "syscall", tid)
    except Exception:
        return None
    first = text.split(" ", 1)[0].strip()
    return int(first) if first.lstrip("-").isdigit() and int(first) >= 0 else None
