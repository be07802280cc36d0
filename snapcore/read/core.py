"""An ELF core opened for reading: segments, notes, memory and threads.

Works on any core of a Linux process (snapcore's, the kernel's, gcore's),
plain or zstandard-compressed.  pyelftools checks the ELF framing and lists
the program headers; the notes are decoded with the structures snapcore
writes them with (elf/structs.py, arch/), so each layout is declared once.

    with CoreReader(path) as core:
        core.arch                 the Arch of e_machine, or None (unknown)
        core.threads()            [CoreThread], the current (first) thread first
        core.read_mem(addr, n)    bytes dumped at addr ("" where not dumped)
        core.prpsinfo(), core.auxv(), core.files(), core.snapcore_record()
"""

import struct
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from .. import metadata
from ..arch import arch_for_machine
from ..elf.structs import (
    ELF_BY_CLASS,
    NT_AUXV,
    NT_FILE,
    NT_PRPSINFO,
    NT_PRSTATUS,
    NT_SIGINFO,
    iter_notes,
)
from ..errors import CoreFormatError
from ..procfs import auxv_map
from .source import SourceFile, open_source

PT_LOAD = "PT_LOAD"
PT_NOTE = "PT_NOTE"


@dataclass
class CoreThread:
    """One NT_PRSTATUS: a thread as the core holds it."""

    tid: int
    cursig: int
    sigpend: int
    sighold: int
    regs: dict  # register name -> value (arch.reg_names)
    pc: int
    sp: int


@dataclass
class Load:
    vaddr: int
    memsz: int
    filesz: int
    offset: int
    flags: int


class CoreReader:
    def __init__(self, path):
        self.path = path
        self.source = open_source(path)
        try:
            try:
                elf = ELFFile(SourceFile(self.source))
            except (ELFError, struct.error, ValueError) as exc:
                raise CoreFormatError(path, f"not an ELF file ({exc})") from None
            if elf["e_type"] != "ET_CORE":
                raise CoreFormatError(path, f"an ELF file of type {elf['e_type']}, not a core")
            self.elf = elf
            self.elfclass = ELF_BY_CLASS[2 if elf.elfclass == 64 else 1]
            self.word = struct.Struct("<Q" if elf.elfclass == 64 else "<I")
            self.e_machine = elf.header["e_machine"]
            machine = {"EM_X86_64": 62, "EM_386": 3, "EM_AARCH64": 183}.get(
                self.e_machine, self.e_machine
            )
            self.arch = arch_for_machine(machine)
            ph_end = elf.header["e_phoff"] + elf.num_segments() * elf.header["e_phentsize"]
            if ph_end > self.source.size:
                raise CoreFormatError(
                    path, "truncated: the program headers end past the end of the file"
                )
            self.has_sections = elf.num_sections() > 0
            self.loads = []
            self.notes = []
            try:
                for seg in elf.iter_segments():
                    if seg["p_type"] == PT_LOAD:
                        self.loads.append(
                            Load(
                                seg["p_vaddr"],
                                seg["p_memsz"],
                                seg["p_filesz"],
                                seg["p_offset"],
                                seg["p_flags"],
                            )
                        )
                    elif seg["p_type"] == PT_NOTE:
                        data = self.source.read_at(seg["p_offset"], seg["p_filesz"])
                        if len(data) < seg["p_filesz"]:
                            raise CoreFormatError(
                                path, "truncated: the notes end past the end of the file"
                            )
                        self.notes.extend(iter_notes(data))
            except (ELFError, struct.error) as exc:
                raise CoreFormatError(path, f"malformed program headers ({exc})") from None
        except BaseException:
            self.source.close()
            raise

    def close(self):
        self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- notes -----------------------------------------------------------------
    def note(self, owner, ntype):
        """The desc of the first note of this owner and type, or None."""
        for name, t, desc in self.notes:
            if name == owner and t == ntype:
                return desc
        return None

    def threads(self):
        arch = self.arch
        out = []
        for name, t, desc in self.notes:
            if name != "CORE" or t != NT_PRSTATUS or arch is None:
                continue
            if len(desc) < arch.prstatus.size:
                raise CoreFormatError(
                    self.path,
                    f"an NT_PRSTATUS of {len(desc)} bytes (expected {arch.prstatus.size})",
                )
            f = arch.prstatus.unpack_from(desc)
            regs = arch.regs(f[18])
            out.append(
                CoreThread(
                    tid=f[6],
                    cursig=f[3],
                    sigpend=f[4],
                    sighold=f[5],
                    regs=regs,
                    pc=regs[arch.pc_reg],
                    sp=regs[arch.sp_reg],
                )
            )
        return out

    def prpsinfo(self):
        """{state, sname, uid, gid, pid, ppid, pgrp, sid, fname, psargs} or None."""
        desc = self.note("CORE", NT_PRPSINFO)
        if desc is None or self.arch is None or len(desc) < self.arch.prpsinfo.size:
            return None
        (state, sname, _, _, _, uid, gid, pid, ppid, pgrp, sid, fname, psargs) = (
            self.arch.prpsinfo.unpack_from(desc)
        )
        return dict(
            state=state,
            sname=sname.decode("ascii", "replace"),
            uid=uid,
            gid=gid,
            pid=pid,
            ppid=ppid,
            pgrp=pgrp,
            sid=sid,
            fname=_cstr(fname),
            psargs=_cstr(psargs).rstrip(),
        )

    def auxv(self):
        desc = self.note("CORE", NT_AUXV) or b""
        return auxv_map(desc, self.word.size)

    def siginfo_signo(self):
        desc = self.note("CORE", NT_SIGINFO)
        return struct.unpack_from("<i", desc, 0)[0] if desc and len(desc) >= 4 else 0

    def files(self):
        """(page_size, [(start, end, pgoff, name)]) from NT_FILE; (4096, []) without it."""
        desc = self.note("CORE", NT_FILE)
        if desc is None:
            return 4096, []
        word = self.word
        w = word.size
        try:
            count, page = word.unpack_from(desc, 0)[0], word.unpack_from(desc, w)[0]
            entries = []
            off = 2 * w
            for _ in range(count):
                entries.append([word.unpack_from(desc, off + k * w)[0] for k in range(3)])
                off += 3 * w
        except struct.error:
            raise CoreFormatError(self.path, "the NT_FILE note is malformed") from None
        names = desc[off:].split(b"\0")
        for e, name in zip(entries, names):
            e.append(name.decode("utf-8", "surrogateescape"))
        return page, [tuple(e) for e in entries if len(e) == 4]

    def snapcore_record(self):
        """The SNAPCORE note's record; None without one; False if it is not JSON."""
        desc = self.note(metadata.SNAPCORE_OWNER, metadata.NT_SNAPCORE_METADATA)
        if desc is None:
            return None
        record = metadata.parse_note(desc)
        return record if record is not None else False

    # -- memory ----------------------------------------------------------------
    def read_mem(self, addr, length):
        """Bytes dumped at addr (as many as one segment holds), or b""."""
        for ld in self.loads:
            if ld.vaddr <= addr < ld.vaddr + ld.filesz:
                n = min(length, ld.vaddr + ld.filesz - addr)
                return self.source.read_at(ld.offset + addr - ld.vaddr, n)
        return b""

    def read_word(self, addr):
        data = self.read_mem(addr, self.word.size)
        return self.word.unpack(data)[0] if len(data) == self.word.size else None


def _cstr(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
