"""snapshot(pid): freeze, collect, copy, resume, publish.

    check the target  ->  create PATH's temp file  ->  on the tracer thread:
        freeze all threads (tracer.Freezer)
        registers of every thread (PTRACE_GETREGSET), /proc facts
        VMAs (smaps) + coredump_filter -> dump plan (memory.plan_dump)
        notes + layout (elf.notes, elf.layout), header written
        memory copied by the C loop (memory.Copier)
        resume (always, on every path)
    -> ftruncate, link to PATH (output.CoreFile)
"""
import errno
import os
import time
from dataclasses import dataclass, field

from . import _native, procfs
from .arch import arch_for_regs_size
from .elf import notes as elfnotes
from .elf.layout import CoreLayout
from .elf.structs import NT_PRSTATUS
from .errors import (AccessDenied, KernelThread, NoSuchProcess, OutputError, SnapcoreError,
                     SnapshotCancelled, TargetExited, UnsupportedTarget, ZombieProcess)
from .memory import READ, BackingFiles, Copier, plan_dump
from .output import CoreFile
from .tracer import CancelToken, Freezer, run_traced


@dataclass
class Snapshot:
    """What snapshot() wrote."""
    path: str
    pid: int
    tids: list
    arch: str
    segments: int               # PT_LOAD count
    bytes_dumped: int           # sum of p_filesz
    file_size: int
    bytes_on_disk: int
    wall_time: float            # seconds, whole call
    pause_time: float           # seconds the target was stopped
    mode: str = "normal"
    unreadable: list = field(default_factory=list)   # [(addr, len, errno)]
    stats: dict = field(default_factory=dict)

    def summary(self):
        return (f"{self.path}: pid {self.pid}, {len(self.tids)} thread"
                f"{'s' if len(self.tids) != 1 else ''}, {self.segments} segments, "
                f"{_human(self.file_size)} ({_human(self.bytes_on_disk)} on disk) "
                f"in {self.wall_time:.2f}s, target paused {self.pause_time * 1000:.0f} ms")


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def check_target(pid):
    """Raise the error that explains why pid cannot be snapshotted, if any."""
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"pid must be an int, not {type(pid).__name__}")
    if pid <= 0:
        raise NoSuchProcess(pid, f"invalid pid {pid}: a pid is a positive integer")
    try:
        st = procfs.read_status(pid)
    except NoSuchProcess:
        raise NoSuchProcess(pid) from None
    if st.tgid != pid:
        # a thread id: snapshot its process
        raise NoSuchProcess(pid, f"{pid} is a thread of process {st.tgid}, not a process; "
                                 f"use {st.tgid}")
    if st.kthread:
        raise KernelThread(pid, st.name)
    if st.state in ("Z", "X"):
        raise ZombieProcess(pid)
    if st.tracer_pid and not procfs.is_own_thread(st.tracer_pid):
        # (a snapcore helper process holds threads of its caller before dumping it)
        from .errors import AlreadyTraced
        raise AlreadyTraced(pid, st.tracer_pid, procfs.comm_of(st.tracer_pid))
    return st


def snapshot(pid, path=None, *, force=False, stop_timeout=5.0, coredump_filter=None,
             writer_thread=True, buffer_size=16 << 20, progress=None):
    """Write an ELF core of the running process ``pid`` and let it run on.

    path            destination (default ``core.PID`` in the current directory)
    force           replace an existing file at path
    stop_timeout    seconds to wait for all threads to stop before giving up
    coredump_filter override /proc/PID/coredump_filter (same bits)
    progress        callable(bytes_done, bytes_total), called from this thread

    Returns a Snapshot; raises a SnapcoreError subclass on failure, after the
    target has been resumed and any partial file removed.

    ``pid`` may be the caller's own pid: a helper process then does the
    tracing (see selfsnap.py) and the calling thread appears in the core,
    stopped in this call.  ``progress`` is not called in that case.
    """
    t0 = time.monotonic()
    status = check_target(pid)
    if pid == os.getpid():
        from .selfsnap import snapshot_self
        path = os.fspath(path) if path is not None else f"core.{pid}"
        return snapshot_self(path, force=force, stop_timeout=stop_timeout,
                             coredump_filter=coredump_filter, writer_thread=writer_thread,
                             buffer_size=buffer_size)
    path = os.fspath(path) if path is not None else f"core.{pid}"
    out = CoreFile(path, force=force)
    cancel = CancelToken()
    job = _Job(pid, out, status, stop_timeout, coredump_filter, writer_thread, buffer_size,
               cancel)

    def poll():
        if progress is not None and job.total:
            progress(job.done(), job.total)

    try:
        snap = run_traced(job.run, cancel, poll)
        out.finish(job.layout.file_size)
    except BaseException:
        out.abort()
        raise
    snap.wall_time = time.monotonic() - t0
    try:
        snap.bytes_on_disk = os.stat(out.path).st_blocks * 512
    except OSError:
        snap.bytes_on_disk = 0
    return snap


def write_frozen(pid, path, freezer, frozen, status, *, force=False, coredump_filter=None,
                 cancel=None, writer_thread=True, buffer_size=16 << 20):
    """Write the core of a process that ``freezer`` holds stopped; leave it stopped.

    For callers that freeze several processes before writing any (trees, the
    self-snapshot helper).  Runs on the freezer's tracer thread.  ``status``
    is the process's /proc status read before the freeze (its state letter
    goes into NT_PRPSINFO).  The caller resumes the process and fills in
    ``pause_time``.
    """
    t0 = time.monotonic()
    out = CoreFile(path, force=force)
    job = _Job(pid, out, status, freezer.stop_timeout, coredump_filter, writer_thread,
               buffer_size, cancel if cancel is not None else CancelToken())
    try:
        snap = job._collect_and_write(freezer, frozen)
        out.finish(job.layout.file_size)
    except BaseException:
        out.abort()
        raise
    snap.wall_time = time.monotonic() - t0
    try:
        snap.bytes_on_disk = os.stat(out.path).st_blocks * 512
    except OSError:
        snap.bytes_on_disk = 0
    return snap


class _Job:
    """The part of a snapshot that runs on the tracer thread."""

    def __init__(self, pid, out, status, stop_timeout, filt, writer_thread, buffer_size,
                 cancel):
        self.pid = pid
        self.out = out
        self.status = status
        self.stop_timeout = stop_timeout
        self.filt = filt
        self.writer_thread = writer_thread
        self.buffer_size = buffer_size
        self.cancel = cancel
        self.total = 0
        self.copier = None
        self.layout = None

    def done(self):
        c = self.copier
        return c.bytes_done if c is not None else 0

    def run(self):
        pid = self.pid
        freezer = Freezer(pid, self.stop_timeout, self.cancel)
        try:
            frozen = freezer.freeze()
            snap = self._collect_and_write(freezer, frozen)
        finally:
            freezer.resume()
        snap.pause_time = freezer.pause_seconds
        return snap

    def _check_cancel(self):
        if self.cancel.is_set():
            raise SnapshotCancelled()

    def _collect_and_write(self, freezer, frozen):
        pid = self.pid
        threads, arch = self._collect_threads(frozen)
        proc = self._collect_process(arch, frozen)
        vmas = _read_vmas(pid)
        filt = self.filt if self.filt is not None else procfs.read_coredump_filter(pid)
        file_ranges = procfs.map_files_ranges(pid)
        self._check_cancel()
        with BackingFiles(pid) as files:
            plans = plan_dump(pid, vmas, filt, file_ranges, files, arch.page_size)
            proc.file_entries = _file_entries(pid, plans, arch.page_size)
            blob = elfnotes.build_notes(arch, proc, threads, _native.cpuid,
                                        _file_note_limit())
            self.layout = layout = CoreLayout(arch, blob, [p.load() for p in plans])
            self.out.write_at(layout.header_block(), 0)
            self.total = sum(p.filesz for p in plans if p.fill == READ)
            self.copier = copier = Copier(pid, self.out.fd, self.buffer_size,
                                          self.writer_thread)
            self.cancel.on_set(copier.cancel)
            try:
                self._check_cancel()
                result = copier.run(plans, layout.offsets)
            except OSError as exc:
                raise self.out.write_error(exc) from exc
            finally:
                copier.close()
        trailer = layout.trailer_block()
        if trailer is not None:
            self.out.write_at(trailer[1], trailer[0])
        return Snapshot(
            path=self.out.path, pid=pid, tids=[t.tid for t in threads], arch=arch.name,
            segments=len(plans), bytes_dumped=sum(p.filesz for p in plans),
            file_size=layout.file_size, bytes_on_disk=0, wall_time=0.0, pause_time=0.0,
            unreadable=result.unreadable,
            stats={k: v for k, v in result.__dict__.items() if k != "unreadable"})

    def _collect_threads(self, frozen):
        """ThreadNotes for every frozen thread, current thread first."""
        pid = self.pid
        arch = None
        out = []
        for ft in frozen:
            try:
                regs = _native.getregset(ft.tid, NT_PRSTATUS)
            except _native.SyscallError as exc:
                if exc.errno == errno.ESRCH:
                    continue                      # killed while stopped (SIGKILL)
                raise
            a = arch_for_regs_size(len(regs))
            if a is None:
                raise UnsupportedTarget(pid, f"unknown register set size {len(regs)}")
            if arch is None:
                arch = a
            regsets = [(NT_PRSTATUS, "CORE", regs)]
            for ntype, owner in arch.regsets[1:]:
                try:
                    data = _native.getregset(ft.tid, ntype)
                except _native.SyscallError:
                    continue                      # not active for this thread (ENODEV, ENXIO)
                if data:
                    regsets.append((ntype, owner, data))
            try:
                tst = procfs.read_status(pid, ft.tid)
                tstat = procfs.read_stat(pid, ft.tid)
            except NoSuchProcess:
                continue
            out.append(elfnotes.ThreadNotes(ft.tid, regsets, sigpend=tst.sig_pnd,
                                            sighold=tst.sig_blk, utime=tstat.utime,
                                            stime=tstat.stime))
        if not out:
            raise TargetExited(pid)
        # the current thread first: the main thread when it is alive
        out.sort(key=lambda t: (t.tid != pid, t.tid))
        if out[0].tid == pid:
            # fill_prstatus(): the group leader carries the whole group's times
            st = procfs.read_stat(pid)
            out[0].utime, out[0].stime = st.utime, st.stime
        return out, arch

    def _collect_process(self, arch, frozen):
        pid = self.pid
        st = procfs.read_stat(pid)
        status = procfs.read_status(pid)
        auxv = procfs.read_bytes(pid, "auxv")
        psargs = b""
        if st.arg_end > st.arg_start:
            try:
                psargs = _native.readv(pid, st.arg_start, min(st.arg_end - st.arg_start, 80))
            except _native.SyscallError:
                psargs = b""
        if not psargs:
            try:
                psargs = procfs.read_bytes(pid, "cmdline")
            except SnapcoreError:
                psargs = b""
        return elfnotes.ProcessNotes(
            pid=pid, ppid=st.ppid, pgrp=st.pgrp, sid=st.session, cutime=st.cutime,
            cstime=st.cstime, state=self.status.state, nice=st.nice, flag=st.flags,
            uid=status.uid[0], gid=status.gid[0],
            comm=st.comm.encode("utf-8", "surrogateescape"), psargs=psargs, auxv=auxv)


def _read_vmas(pid):
    try:
        return procfs.read_smaps(pid)
    except NoSuchProcess:
        raise TargetExited(pid) from None


def _file_entries(pid, plans, page_size):
    """NT_FILE entries: every VMA with a file, its exact path from map_files."""
    out = []
    for p in plans:
        if not p.has_file:
            continue
        v = p.vma
        name = procfs.map_files_link(pid, v.start, v.end)
        if name is None:
            name = procfs.unescape_maps_name(v.name)
        if not name:
            continue
        out.append((v.start, v.end, v.offset // page_size,
                    name.encode("utf-8", "surrogateescape")))
    return out


def _file_note_limit():
    try:
        with open("/proc/sys/kernel/core_file_note_size_limit") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 4 << 20
