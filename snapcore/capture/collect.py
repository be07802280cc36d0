"""What a snapshot records besides memory: the target check, threads, registers,
process facts and the NT_FILE entries.

    check_target(pid)              before anything: is pid a process we may dump?
    collect_threads(pid, frozen)   while frozen: ThreadNotes (registers, signal
                                   masks, times) of every stopped thread
    collect_process(pid, ...)      ProcessNotes: ids, state, argv, auxv
    file_entries(pid, plans)       NT_FILE: every file-backed VMA, exact path
                                   (the target's own, see nsview.py)

A process in another pid namespace gets its own pids in the notes, as the
kernel's core would hold them (nsview.py); snapcore's results and metadata
keep the host's and record both.

Everything here reads /proc or ptrace; nothing decides what memory is dumped
(plan.py) or writes anything.
"""

import errno
import os
import time
from dataclasses import dataclass

from .. import _native, procfs
from ..arch import arch_for_regs_size
from ..elf import notes as elfnotes
from ..elf.structs import NT_PRSTATUS
from ..errors import (
    AlreadyTraced,
    KernelThread,
    NoSuchProcess,
    ProcFormatError,
    SnapcoreError,
    TargetExited,
    UnsupportedTarget,
    ZombieProcess,
)
from . import nsview
from .freeze import Unstable, has_live_task
from .plan import read_memory


def check_target(pid):
    """Raise the error that explains why pid cannot be snapshotted; else its Status."""
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"pid must be an int, not {type(pid).__name__}")
    if pid <= 0:
        raise NoSuchProcess(pid, f"invalid pid {pid}: a pid is a positive integer")
    try:
        st = procfs.read_status(pid)
    except NoSuchProcess:
        raise NoSuchProcess(pid) from None
    if st.tgid != pid:
        raise NoSuchProcess(
            pid, f"{pid} is a thread of process {st.tgid}, not a process; use {st.tgid}"
        )
    if st.kthread:
        raise KernelThread(pid, st.name)
    if st.state in ("Z", "X") and not has_live_task(pid):
        # a zombie leader with live threads is still a process; and while a thread
        # other than the leader execs, the leader reads Z for a moment and that
        # thread's tid vanishes (it takes the leader's): look again before saying so
        for pause in (0.001, 0.005, 0.02):
            time.sleep(pause)
            try:
                st = procfs.read_status(pid)
            except NoSuchProcess:
                raise NoSuchProcess(pid) from None
            if st.state not in ("Z", "X") or has_live_task(pid):
                break
        else:
            raise ZombieProcess(pid)
    if st.tracer_pid and not procfs.is_own_thread(st.tracer_pid):
        # (a snapcore helper process holds threads of its caller before dumping it)
        raise AlreadyTraced(pid, *procfs.tracer_process(st.tracer_pid))
    return st


# sc_read_threads: threads per call (their regsets: 3-12 kB each, in one buffer
# freed after the call), and the room for a regset no thread showed yet.  One
# call for up to 1024 threads: each return from C waits for Python's lock, which
# EarlyPlan's thread may hold for up to sys.getswitchinterval() (5 ms).
_BATCH = 1024
_GUESSED_CAP = 64


def collect_threads(pid, frozen, before_read=None):
    """ThreadNotes for every frozen thread, current thread first; and the Arch.

    Raises Unstable unless every live thread of the process is in a ptrace
    stop for us: an exec (which replaces the threads and their tids) or a
    thread we never caught would make an inconsistent core.

    Each thread's status, stat and regsets are read by one C call per 1024
    threads (_native.read_threads), which leaves Python's lock to other threads
    meanwhile: ``before_read()``, if given, is called just before, to start work
    that overlaps it (job.py starts plan.EarlyPlan).
    """
    arch = None
    out = []
    frozen_tids = {ft.tid for ft in frozen}
    try:
        listed = procfs.list_tids(pid)
    except NoSuchProcess:
        raise TargetExited(pid) from None
    for tid in listed:
        if tid in frozen_tids:
            continue
        try:
            state = procfs.read_status(pid, tid).state
        except NoSuchProcess:
            continue
        if state not in ("Z", "X"):
            raise Unstable(f"thread {tid} appeared")
    types, caps, exact = _regset_plan(frozen)
    guessed = [j for j, known in enumerate(exact) if not known]
    tids = [ft.tid for ft in frozen]
    if before_read is not None:
        before_read()
    for first in range(0, len(tids), _BATCH):
        chunk = tids[first : first + _BATCH]
        for tid, (status_err, stat_err, state, sig_pnd, sig_blk, utime, stime, regsets) in zip(
            chunk, _native.read_threads(pid, chunk, types, caps)
        ):
            try:
                if status_err:
                    state, sig_pnd, sig_blk = _thread_file(
                        pid, tid, "status", status_err, procfs.parse_thread_status
                    )
                if stat_err:
                    _, utime, stime = _thread_file(
                        pid, tid, "stat", stat_err, procfs.parse_thread_times
                    )
            except NoSuchProcess:
                continue  # killed while stopped (SIGKILL)
            if state in ("Z", "X"):
                continue
            if state != "t":
                raise Unstable(f"thread {tid} is not stopped ({state})")
            for j in guessed:
                data = regsets[j]
                if not isinstance(data, int) and len(data) == caps[j]:
                    regsets[j] = _native.getregset_or_none(tid, types[j])  # whole
            regs = regsets[0]
            if regs is None:
                regs = -errno.ESRCH  # (gone since its first read)
            if isinstance(regs, int):
                if regs == -errno.ESRCH:
                    raise Unstable(f"thread {tid} left its stop")
                raise _native.SyscallError(
                    f"ptrace(PTRACE_GETREGSET, {NT_PRSTATUS:#x})", -regs, tid
                )
            a = arch_for_regs_size(len(regs))
            if a is None:
                raise UnsupportedTarget(pid, f"unknown register set size {len(regs)}")
            if arch is None:
                arch = a
                if len(types) != len(arch.regsets):  # no thread answered _regset_plan
                    raise Unstable(f"thread {tid} was not stopped when first read")
            notes = [(NT_PRSTATUS, "CORE", regs)]
            for (ntype, owner), data in zip(arch.regsets[1:], regsets[1:]):
                if isinstance(data, int) or data is None:
                    continue  # not active for this thread (ENODEV, ENXIO)
                if arch.regset_active(ntype, data):
                    notes.append((ntype, owner, data))
            out.append(
                elfnotes.ThreadNotes(
                    tid, notes, sigpend=sig_pnd, sighold=sig_blk, utime=utime, stime=stime
                )
            )
    if not out:
        raise TargetExited(pid)
    # the current thread first: the main thread when it is alive
    out.sort(key=lambda t: (t.tid != pid, t.tid))
    if len(procfs.read_status(pid).nspid) > 1:
        own = nsview.thread_ids(pid, [t.tid for t in out])
        for t in out:
            t.ns_tid = own.get(t.tid)
    if out[0].tid == pid:
        # fill_prstatus(): the group leader carries the whole group's times
        st = procfs.read_stat(pid)
        out[0].utime, out[0].stime = st.utime, st.stime
    return out, arch


def _regset_plan(frozen):
    """(regset types, caps, exact) for read_threads(), from the first thread that
    answers PTRACE_GETREGSET: the architecture's regsets, each with the size it
    had there (a regset's size is the same in every thread: exact) or a guess (not
    active there; a result that fills it is read again whole)."""
    for ft in frozen:
        try:
            regs = _native.getregset(ft.tid, NT_PRSTATUS)
        except _native.SyscallError:
            continue  # gone or left its stop: the read of every thread says which
        arch = arch_for_regs_size(len(regs))
        if arch is None:
            break
        caps, exact = [len(regs)], [True]
        for ntype, _ in arch.regsets[1:]:
            data = _native.getregset_or_none(ft.tid, ntype)
            caps.append(len(data) if data else _GUESSED_CAP)
            exact.append(bool(data))
        return [t for t, _ in arch.regsets], caps, exact
    return [NT_PRSTATUS], [_GUESSED_CAP], [False]


def _thread_file(pid, tid, rel, err, parser):
    """parser() of task/TID/rel, which sc_read_threads could not read (-errno:
    raised as procfs raises it) or parse (-EBADMSG: read and parsed here, which
    names what is wrong)."""
    if err != -errno.EBADMSG:
        path = f"/proc/{pid}/task/{tid}/{rel}"
        raise procfs.translate(pid, OSError(-err, os.strerror(-err), path), path)
    return procfs.parsed(pid, parser, rel, tid)


def collect_process(pid, state, arch, mem_pid):
    """Process-wide facts; argv is read from mem_pid (the target or its image).

    ``state`` is the /proc state letter read before the freeze (a frozen
    process reads "t"): it goes into NT_PRPSINFO.
    """
    st = procfs.read_stat(pid)
    status = procfs.read_status(pid)
    try:
        auxv = procfs.auxv_through_null(procfs.read_bytes(pid, "auxv"), arch.word_size)
    except ValueError as exc:
        raise ProcFormatError(pid, f"/proc/{pid}/auxv", str(exc)) from None
    psargs = b""
    if st.arg_end > st.arg_start:
        psargs = read_memory(mem_pid, st.arg_start, min(st.arg_end - st.arg_start, 80))
    if not psargs:
        try:
            psargs = procfs.read_bytes(pid, "cmdline")
        except SnapcoreError:
            psargs = b""
    return elfnotes.ProcessNotes(
        pid=pid,
        ppid=st.ppid,
        pgrp=st.pgrp,
        sid=st.session,
        cutime=st.cutime,
        cstime=st.cstime,
        state=state,
        nice=st.nice,
        flag=st.flags,
        uid=status.uid[0],
        gid=status.gid[0],
        comm=st.comm.encode("utf-8", "surrogateescape"),
        psargs=psargs,
        auxv=auxv,
        ns_ids=nsview.process_ids(pid, status),
    )


def file_entries(pid, plans, page_size):
    """NT_FILE entries: every VMA with a file, its exact path (map_files, read
    from the target's root as the kernel's dumper would: nsview.py)."""
    vmas = [p.vma for p in plans if p.has_file and p.first_piece]
    names = nsview.file_names(pid, vmas)
    out = []
    for v in vmas:
        name = names[(v.start, v.end)]
        if not name:
            continue
        out.append((v.start, v.end, v.offset // page_size, name.encode("utf-8", "surrogateescape")))
    return out


@dataclass(frozen=True)
class MappedRange:
    """A file-backed VMA as NT_FILE names it, with the inode behind it (--bundle)."""

    start: int
    end: int
    offset: int  # bytes
    name: str  # the target's path, " (deleted)" kept
    dev_major: int
    dev_minor: int
    inode: int

    @property
    def key(self):
        return (self.dev_major, self.dev_minor, self.inode)


def mapped_ranges(plans, entries):
    """[MappedRange] for the NT_FILE entries (from file_entries) of these plans."""
    names = {(start, end): name for start, end, _, name in entries}
    out = []
    for p in plans:
        v = p.vma
        name = names.get((v.start, v.end)) if p.has_file and p.first_piece else None
        if name is not None:
            out.append(
                MappedRange(
                    v.start,
                    v.end,
                    v.offset,
                    name.decode("utf-8", "surrogateescape"),
                    v.dev_major,
                    v.dev_minor,
                    v.inode,
                )
            )
    return out


def file_note_limit():
    """kernel.core_file_note_size_limit (NT_FILE is left out above it)."""
    try:
        with open("/proc/sys/kernel/core_file_note_size_limit") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 4 << 20


def thread_meta(pid, threads, states, snapcore_tids=()):
    """[{tid, ns_tid, name, state, snapcore}] for the metadata; names and states
    read before the freeze.  ns_tid: the id the core's notes carry (the thread's
    own pid namespace), the same as tid unless the process is in another one.
    snapcore: the thread is taking this snapshot (a snapshot of snapcore's caller)."""
    out = []
    for t in threads:
        state, name = states.get(t.tid) or (None, _thread_name(pid, t.tid))
        ns_tid = t.ns_tid if t.ns_tid is not None else t.tid
        out.append(
            {
                "tid": t.tid,
                "ns_tid": ns_tid,
                "name": name,
                "state": state,
                "snapcore": t.tid in snapcore_tids,
            }
        )
    return out


def _thread_name(pid, tid):
    try:
        return procfs.read_text(pid, "comm", tid).rstrip("\n")
    except SnapcoreError:
        return None
