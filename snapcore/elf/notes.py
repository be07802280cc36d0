"""The PT_NOTE contents, in the kernel's order (fs/binfmt_elf.c write_note_info):

    T0: NT_PRSTATUS, NT_PRPSINFO, NT_SIGINFO, NT_AUXV, NT_FILE, T0's other regsets
    T1: NT_PRSTATUS, T1's other regsets
    ...
    NT_X86_XSAVE_LAYOUT (once, last)

T0 is the "current" thread readers show first (gdb's selected thread, drgn's
crashed thread, lldb's thread #1).  An on-demand snapshot has no signal, so
pr_cursig is 0 and NT_SIGINFO is 128 zero bytes: pystack then reports the core
as generated on demand, and gdb prints no "terminated with signal" line.
"""

import functools
import struct
from dataclasses import dataclass, field

from .structs import (
    NT_AUXV,
    NT_FILE,
    NT_PRFPREG,
    NT_PRPSINFO,
    NT_PRSTATUS,
    NT_SIGINFO,
    note,
    note_parts,
    note_size,
)

SIGINFO_SIZE = 128
_RSDTZW = "RSDTZW"


@dataclass
class ThreadNotes:
    """What one frozen thread contributes."""

    tid: int
    regsets: list  # [(note_type, owner, bytes)] in the kernel's view order
    sigpend: int = 0
    sighold: int = 0
    utime: int = 0  # clock ticks
    stime: int = 0
    ns_tid: int = None  # the id pr_pid carries when the thread is in another pid
    # namespace: its own there, as the kernel writes it (None: tid)

    @property
    def note_tid(self):
        return self.tid if self.ns_tid is None else self.ns_tid

    def regset(self, note_type):
        for t, _, data in self.regsets:
            if t == note_type:
                return data
        return None


@dataclass
class ProcessNotes:
    pid: int
    ppid: int
    pgrp: int
    sid: int
    cutime: int
    cstime: int
    state: str  # /proc state letter before the freeze
    nice: int
    flag: int
    uid: int
    gid: int
    comm: bytes
    psargs: bytes  # raw argv area (NULs kept), truncated by psargs_field
    auxv: bytes
    file_entries: list = field(default_factory=list)  # [(start, end, pgoff_pages, name_bytes)]
    vma_count: int = 0  # every VMA, the gate VMA included (one PT_LOAD each)
    # (pid, ppid, pgrp, sid) in the process's own pid namespace, which the notes
    # carry when it is not snapcore's (task_*_vnr() in the kernel's dumper)
    ns_ids: tuple = None

    @property
    def note_ids(self):
        """(pid, ppid, pgrp, sid) as the notes carry them."""
        return self.ns_ids or (self.pid, self.ppid, self.pgrp, self.sid)


def psargs_field(argv_area):
    """The kernel's pr_psargs: at most 79 bytes of argv, NULs as spaces."""
    return argv_area[:79].replace(b"\0", b" ")


def state_index(letter):
    """/proc state letter -> (pr_state, pr_sname) as fill_psinfo would give them."""
    letter = {"t": "T", "I": "D", "P": "D"}.get(letter, letter)
    idx = _RSDTZW.find(letter)
    if idx < 0:
        return 0, "R"
    return idx, letter


def build_file_note(entries, word_size, page_size):
    """NT_FILE: count, page_size, {start, end, pgoff}[count], then NUL-terminated names."""
    fmt = "<Q" if word_size == 8 else "<I"
    w = struct.Struct(fmt)
    parts = [w.pack(len(entries)), w.pack(page_size)]
    for start, end, pgoff, _ in entries:
        parts += [w.pack(start), w.pack(end), w.pack(pgoff)]
    for *_, name in entries:
        parts.append(name + b"\0")
    return b"".join(parts)


def file_note_fits(entries, vma_count, word_size, page_size, limit):
    """Whether the kernel would write NT_FILE at all (fs/binfmt_elf.c fill_files_note()).

    The kernel sizes its buffer from the VMA count, not from the note: it starts
    at 64 bytes per VMA, grows by 5/4 whenever the names do not fit, and leaves
    NT_FILE out as soon as that size reaches kernel.core_file_note_size_limit.
    So a process with 65536 VMAs or more (4 MiB / 64) gets no NT_FILE under the
    default limit, however few files it maps.
    """
    size = vma_count * 64
    names_ofs = (2 + 3 * vma_count) * word_size
    while True:
        if size >= limit:
            return False
        size = -(-size // page_size) * page_size
        remaining = size - names_ofs
        for *_, name in entries:
            if len(name) + 1 > remaining:  # d_path(): ENAMETOOLONG
                break
            remaining -= len(name) + 1
        else:
            return True
        size = size * 5 // 4


def desc_offset(owner):
    """Offset of a note's desc from the start of its record."""
    return 12 + ((len(owner) + 1 + 3) & ~3)


class KernelNotes:
    """The kernel's PT_NOTE blob, threads[0] the current thread: its size known at
    once, its bytes made by build().  snapcore's own SNAPCORE record
    (snapcore/metadata.py) follows it, added by the caller.

    The size fixes the layout, which the copy needs; the bytes (3.5 MB for 1000
    threads with AVX-512 state, 12 MB with AMX) need only what was read of the
    threads, so a job writing to a file builds them after the target has been
    resumed.  As a part of CoreLayout's notes: len() is the size, and
    CoreLayout.header_parts() asks for parts().
    """

    def __init__(self, arch, proc, threads, cpuid, file_note_limit=4 << 20):
        self.arch, self.proc, self.threads = arch, proc, threads
        ps_index, sname = state_index(proc.state)
        pid, ppid, pgrp, sid = proc.note_ids
        self.prpsinfo = arch.build_prpsinfo(
            state_index=ps_index,
            sname=sname,
            nice=proc.nice,
            flag=proc.flag,
            uid=proc.uid,
            gid=proc.gid,
            pid=pid,
            ppid=ppid,
            pgrp=pgrp,
            sid=sid,
            fname=proc.comm,
            psargs=psargs_field(proc.psargs),
        )
        self.file_desc = None
        if file_note_fits(
            proc.file_entries, proc.vma_count, arch.word_size, arch.page_size, file_note_limit
        ):
            self.file_desc = build_file_note(proc.file_entries, arch.word_size, arch.page_size)
        self.tail = b""  # the process-wide notes after the threads'
        if arch.process_notes is not None:
            first = threads[0] if threads else None
            self.tail = b"".join(
                note(owner, ntype, desc) for owner, ntype, desc in arch.process_notes(first, cpuid)
            )
        self.size = len(self.tail) + sum(
            note_size(owner, size) for owner, _, size, _ in self._notes()
        )

    def __len__(self):
        return self.size

    def _notes(self):
        """(owner, type, desc size, desc or a function making it) of every note
        before the tail, in the kernel's order (the first thread's NT_PRSTATUS is
        followed by the process's notes): one walk for the size and the bytes."""
        after_first = (
            (NT_PRPSINFO, self.prpsinfo),
            (NT_SIGINFO, b"\0" * SIGINFO_SIZE),
            (NT_AUXV, self.proc.auxv),
        )
        if self.file_desc is not None:
            after_first += ((NT_FILE, self.file_desc),)
        prstatus = self.arch.prstatus.size
        for i, t in enumerate(self.threads):
            yield "CORE", NT_PRSTATUS, prstatus, functools.partial(self._prstatus, t)
            if i == 0:
                for ntype, desc in after_first:
                    yield "CORE", ntype, len(desc), desc
            for ntype, owner, data in t.regsets:
                if ntype != NT_PRSTATUS:
                    yield owner, ntype, len(data), data

    def _prstatus(self, t):
        """Thread t's NT_PRSTATUS desc."""
        _, ppid, pgrp, sid = self.proc.note_ids
        regs = t.regset(NT_PRSTATUS)
        return self.arch.build_prstatus(
            tid=t.note_tid,
            ppid=ppid,
            pgrp=pgrp,
            sid=sid,
            sigpend=t.sigpend,
            sighold=t.sighold,
            utime=t.utime,
            stime=t.stime,
            cutime=self.proc.cutime,
            cstime=self.proc.cstime,
            regs=regs,
            fpvalid=t.regset(NT_PRFPREG) is not None,
        )

    def parts(self):
        """The notes' bytes as a list of parts, to be written one after the other:
        the threads' regsets are parts themselves, not copied (1000 threads with
        AMX state: 12 MB of them)."""
        out = []
        for owner, ntype, _, desc in self._notes():
            out.extend(note_parts(owner, ntype, desc() if callable(desc) else desc))
        out.append(self.tail)
        out = [part for part in out if part]
        built = sum(len(part) for part in out)
        if built != self.size:  # a desc made with another size than _notes() gave
            raise AssertionError(f"kernel notes: {built} bytes built, {self.size} sized")
        return out

    def build(self):
        return b"".join(self.parts())
