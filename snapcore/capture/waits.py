"""What each frozen thread waits on, recorded while the process is frozen.

    facts = frozen_facts(src, arch, threads, samples, plans)
    facts.kernel     {tid: the "kernel" key of the thread in the SNAPCORE record}
    facts.python     {tid: the thread's "python" key}, or {} for other processes
    facts.process    the record's "python" key (version, runtime, gil, errors) or None
    facts.ranges     [(start, end)] a --mini core keeps: the futex words, poll
                     arrays and everything the Python walk read

The system call comes from the frozen registers, which hold it at the instant
of the core (the /proc sample, kstate.py, was taken a moment before):
arch.syscall_of() gives its number and six arguments.  For calls whose
arguments point at what they wait on, those words are read now and recorded,
so that a verdict does not depend on the core keeping them:

    futex, futex_time64, futex_wait   48 bytes from uaddr - 16: a pthread mutex's
                                      __owner (uaddr + 8), an rwlock's writer
    poll, ppoll                       the pollfd array: [fd, events]
    select, pselect6                  the fds of the read and write sets

Python processes (CPython 3.11-3.13): the stack of every thread, which
holds the GIL, and the locks each frame references (cpython/walk.py).
``src`` is the process memory is read from: the frozen target, or in live
mode its copy-on-write image.
"""

import bisect
import os
import struct
from dataclasses import dataclass, field

from ..cpython import Memory, find_runtime, walk
from ..elf.structs import NT_PRSTATUS
from ..procmaps import unescape_maps_name

FUTEX_CALLS = frozenset({"futex", "futex_time64", "futex_wait"})
POLL_CALLS = frozenset({"poll", "ppoll", "ppoll_time64"})
SELECT_CALLS = frozenset({"select", "_newselect", "pselect6", "pselect6_time64"})
FUTEX_WINDOW_BEFORE = 16
FUTEX_WINDOW = 48
MAX_POLLFDS = 256
MAX_SELECT_FDS = 1024
_POLLFD = struct.Struct("<ihh")


@dataclass
class FrozenFacts:
    kernel: dict = field(default_factory=dict)
    python: dict = field(default_factory=dict)
    process: dict = None
    ranges: list = field(default_factory=list)


def _reader(pid):
    """read(addr, n) over /proc/PID/mem (one descriptor), and its closer."""
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return (lambda a, n: b""), (lambda: None)

    def read(addr, n):
        try:
            return os.pread(fd, n, addr)
        except OSError:
            return b""

    return read, lambda: os.close(fd)


def _syscall(arch, regs):
    nr, args = arch.syscall_of(regs)
    if nr is None:
        return None
    return {
        "nr": nr,
        "name": arch.syscall_name(nr) or f"syscall_{nr}",
        "args": args,
        "sp": regs[arch.sp_reg],
        "pc": regs[arch.pc_reg],
    }


def _fd_set(data, nfds):
    out = []
    for fd in range(min(nfds, 8 * len(data))):
        if data[fd >> 3] >> (fd & 7) & 1:
            out.append(fd)
    return out


def _call_memory(mem, call, word, page):
    """(extra kernel keys, ranges) for the memory a call's arguments point at."""
    name, args = call["name"], call["args"]
    extra, ranges = {}, []
    if name in FUTEX_CALLS and args[0]:
        start = args[0] - FUTEX_WINDOW_BEFORE
        data = mem.read(start, FUTEX_WINDOW, keep=False)
        extra["futex"] = {"addr": args[0], "words_at": start, "words": data.hex()}
        ranges.append((args[0] - args[0] % page, args[0] - args[0] % page + page))
    elif name in POLL_CALLS and args[0]:
        n = min(args[1], MAX_POLLFDS)
        data = mem.read(args[0], n * _POLLFD.size, keep=False)
        extra["pollfds"] = [
            [fd, events] for fd, events, _ in _POLLFD.iter_unpack(data[: len(data) // 8 * 8])
        ]
        ranges.append((args[0], args[0] + len(data)))
    elif name in SELECT_CALLS:
        nfds = min(args[0], MAX_SELECT_FDS)
        size = (nfds + 8 * word - 1) // (8 * word) * word
        sets = {}
        for key, ptr in (("read", args[1]), ("write", args[2])):
            if ptr:
                sets[key] = _fd_set(mem.read(ptr, size, keep=False), nfds)
                ranges.append((ptr, ptr + size))
        extra["selectfds"] = sets
    return extra, ranges


def _valid(plans):
    spans = sorted((p.vma.start, p.vma.end) for p in plans if p.first_piece and p.vma.readable)
    starts = [s for s, _ in spans]

    def valid(addr):
        i = bisect.bisect_right(starts, addr) - 1
        return i >= 0 and addr < spans[i][1]

    return valid


def _python(src, plans, read):
    maps = [
        (p.vma.start, p.vma.end, p.vma.offset, unescape_maps_name(p.vma.name))
        for p in plans
        if p.has_file and p.first_piece and p.vma.name.startswith("/")
    ]
    runtime = find_runtime(maps, lambda path, s, e: f"/proc/{src}/map_files/{s:x}-{e:x}")
    if runtime is None:
        return None, None
    mem = Memory(read)
    return walk(mem, runtime, _valid(plans)), mem.touched


def frozen_facts(src, arch, threads, samples, plans):
    """FrozenFacts of a frozen process (see the module docstring)."""
    facts = FrozenFacts()
    read, close = _reader(src)
    try:
        mem = Memory(read)
        for t in threads:
            regs = arch.regs(t.regset(NT_PRSTATUS))
            kernel = dict(samples.get(t.tid) or {"state": None})
            kernel.pop("name", None)
            kernel.pop("proc_syscall", None)  # the frozen registers say it at the instant
            call = _syscall(arch, regs)
            kernel["syscall"] = call
            if call is not None:
                extra, ranges = _call_memory(mem, call, arch.word_size, arch.page_size)
                kernel.update(extra)
                facts.ranges += ranges
            facts.kernel[t.tid] = kernel
        if arch.word_size == 8:
            result, touched = _python(src, plans, read)
            if result is not None:
                facts.ranges += touched
                for th in result.pop("threads"):
                    if th["tid"] is not None:
                        facts.python[th["tid"]] = th
                facts.process = result
    finally:
        close()
    return facts


def annotate(threads_meta, facts):
    """The record's thread entries with their "kernel" and "python" keys."""
    for entry in threads_meta:
        entry["kernel"] = facts.kernel.get(entry["tid"])
        py = facts.python.get(entry["tid"])
        if py is not None:
            py = {k: v for k, v in py.items() if k != "tid"}
        entry["python"] = py
    return threads_meta
