"""Where every byte of the core goes, computed once.

    +-----------------------------+ 0
    | ELF header                  |
    +-----------------------------+ e_phoff = sizeof(Ehdr)
    | Phdr[0] PT_NOTE  (align 4)  |
    | Phdr[1..n] PT_LOAD, one per |
    |   VMA, address order,       |
    |   [vsyscall] last           |
    +-----------------------------+ notes_off
    | notes (see notes.py)        |
    +-----------------------------+ data_off = roundup(notes end, page)
    | PT_LOAD data, back to back, |
    |   p_filesz bytes each;      |
    |   all-zero and unread pages |
    |   are holes (sparse file)   |
    +-----------------------------+ data_end
    | Shdr[0] (only with PN_XNUM: |
    |   sh_info = real phnum)     |
    +-----------------------------+ file_size

This is the kernel's layout (fs/binfmt_elf.c elf_core_dump): p_offset of a
PT_LOAD with p_filesz 0 is still the running offset, p_paddr is 0, p_align is
the page size.  The writer streams: the header block is written once, the
segment data by the C copy loop at the offsets computed here.
"""

import array
from typing import NamedTuple

from .structs import PF_R, PF_W, PF_X, PN_XNUM, PT_LOAD, PT_NOTE


class Load(NamedTuple):
    """A segment as the layout needs it; anything with these attributes will do
    (capture.plan.VmaPlan has them)."""

    vaddr: int
    memsz: int
    filesz: int
    flags: int  # PF_R | PF_W | PF_X


def pflags(readable, writable, executable):
    return (PF_R if readable else 0) | (PF_W if writable else 0) | (PF_X if executable else 0)


def _roundup(n, a):
    return (n + a - 1) // a * a


class CoreLayout:
    def __init__(self, arch, notes, loads):
        """notes: the PT_NOTE contents, as bytes or as a sequence of parts (the
        kernel's notes, then snapcore's: 1000 threads' notes are 12 MB with AVX-512
        or AMX state, and not joining them saves copies while the target is stopped).
        A part may also be made later: anything with len() and parts() (the bytes
        it stands for, asked by header_parts(); notes.KernelNotes)."""
        self.arch = arch
        self.notes = (notes,) if isinstance(notes, (bytes, bytearray, memoryview)) else tuple(notes)
        self.notes_len = sum(len(part) for part in self.notes)
        self.loads = list(loads)
        elf = arch.elf
        self.phnum = 1 + len(self.loads)
        self.xnum = self.phnum >= PN_XNUM
        self.phoff = elf.ehdr.size
        self.notes_off = self.phoff + self.phnum * elf.phdr.size
        self.data_off = _roundup(self.notes_off + self.notes_len, arch.page_size)
        self.offsets = array.array("Q")  # 8 bytes each, not a list of ints
        off = self.data_off
        for ld in self.loads:
            self.offsets.append(off)
            off += ld.filesz
        self.data_end = off
        self.shoff = self.data_end if self.xnum else 0
        self.file_size = self.data_end + (elf.shdr.size if self.xnum else 0)

    def header_block(self):
        """ELF header, program headers and notes: bytes [0, notes_off + notes_len)."""
        return b"".join(self.header_parts())

    def header_parts(self):
        """header_block() as [ELF header and program headers, note parts...], to be
        written one after the other from offset 0.

        The headers are packed into one buffer: 65,000 program headers as separate
        bytes objects would cost more memory than the headers themselves.
        """
        elf = self.arch.elf
        buf = bytearray(self.notes_off)
        ehdr = elf.pack_ehdr(
            e_machine=self.arch.e_machine,
            e_phoff=self.phoff,
            e_phnum=PN_XNUM if self.xnum else self.phnum,
            e_shoff=self.shoff,
            e_shnum=1 if self.xnum else 0,
            e_shentsize=elf.shdr.size if self.xnum else 0,
        )
        buf[: len(ehdr)] = ehdr
        size = elf.phdr.size
        at = self.phoff
        elf.pack_phdr_into(buf, at, PT_NOTE, 0, self.notes_off, 0, self.notes_len, 0, 4)
        page = self.arch.page_size
        for ld, off in zip(self.loads, self.offsets):
            at += size
            elf.pack_phdr_into(buf, at, PT_LOAD, ld.flags, off, ld.vaddr, ld.filesz, ld.memsz, page)
        out = [buf]
        for part in self.notes:
            out.extend(part.parts() if hasattr(part, "parts") else (part,))
        return out

    def trailer_block(self):
        """(offset, bytes) to write after the data, or None."""
        if not self.xnum:
            return None
        return self.shoff, self.arch.elf.pack_shdr_xnum(self.phnum)
