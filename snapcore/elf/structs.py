"""ELF structures, declared once per class (little-endian only: x86).

Field names follow the ELF specification; values come from
include/uapi/linux/elf.h and the System V ABI.
"""

import functools
import struct
from collections import namedtuple
from dataclasses import dataclass

ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ET_CORE = 4

PT_LOAD = 1
PT_DYNAMIC = 2
PT_NOTE = 4
PT_PHDR = 6
PF_X = 1
PF_W = 2
PF_R = 4
PN_XNUM = 0xFFFF
SHT_NULL = 0

# note types
NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_PRPSINFO = 3
NT_AUXV = 6
NT_SIGINFO = 0x53494749
NT_FILE = 0x46494C45
NT_PRXFPREG = 0x46E62B7F
NT_386_TLS = 0x200
NT_386_IOPERM = 0x201
NT_X86_XSTATE = 0x202
NT_X86_SHSTK = 0x204
NT_X86_XSAVE_LAYOUT = 0x205
NT_GNU_BUILD_ID = 3

# auxiliary vector entries (include/uapi/linux/auxvec.h)
AT_NULL = 0
AT_PHDR = 3
AT_PHNUM = 5
AT_ENTRY = 9
AT_EXECFN = 31
AT_SYSINFO_EHDR = 33

# dynamic section tags
DT_NULL = 0
DT_DEBUG = 21

ELFMAG = b"\x7fELF"

Phdr = namedtuple("Phdr", "p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align")


@dataclass(frozen=True)
class ElfClass:
    elfclass: int
    ehdr: struct.Struct
    phdr: struct.Struct
    shdr: struct.Struct

    @property
    def word_size(self):
        return 8 if self.elfclass == ELFCLASS64 else 4

    def pack_ehdr(
        self, *, e_machine, e_phoff, e_phnum, e_shoff=0, e_shnum=0, e_shentsize=0, e_shstrndx=0
    ):
        ident = b"\x7fELF" + bytes([self.elfclass, ELFDATA2LSB, EV_CURRENT, 0, 0]) + b"\0" * 7
        return self.ehdr.pack(
            ident,
            ET_CORE,
            e_machine,
            EV_CURRENT,
            0,
            e_phoff,
            e_shoff,
            0,
            self.ehdr.size,
            self.phdr.size,
            e_phnum,
            e_shentsize,
            e_shnum,
            e_shstrndx,
        )

    def _phdr_fields(self, p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz, p_align, p_paddr):
        if self.elfclass == ELFCLASS64:
            return p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        return p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align

    def pack_phdr(self, p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz, p_align, p_paddr=0):
        return self.phdr.pack(
            *self._phdr_fields(
                p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz, p_align, p_paddr
            )
        )

    def pack_phdr_into(
        self, buf, at, p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz, p_align, p_paddr=0
    ):
        self.phdr.pack_into(
            buf,
            at,
            *self._phdr_fields(
                p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz, p_align, p_paddr
            ),
        )

    def unpack_phdr(self, data, offset=0):
        """A Phdr (the field order differs between the classes)."""
        v = self.phdr.unpack_from(data, offset)
        if self.elfclass == ELFCLASS64:
            return Phdr(*v)
        p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align = v
        return Phdr(p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align)

    def unpack_ehdr(self, data):
        """{field: value} of an ELF header."""
        names = (
            "e_ident",
            "e_type",
            "e_machine",
            "e_version",
            "e_entry",
            "e_phoff",
            "e_shoff",
            "e_flags",
            "e_ehsize",
            "e_phentsize",
            "e_phnum",
            "e_shentsize",
            "e_shnum",
            "e_shstrndx",
        )
        return dict(zip(names, self.ehdr.unpack_from(data)))

    def pack_shdr_xnum(self, real_phnum):
        """Section header 0 carrying the real segment count (PN_XNUM)."""
        # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info,
        # sh_addralign, sh_entsize
        return self.shdr.pack(0, SHT_NULL, 0, 0, 0, 1, 0, real_phnum, 0, 0)


ELF64 = ElfClass(
    ELFCLASS64,
    ehdr=struct.Struct("<16sHHIQQQIHHHHHH"),
    phdr=struct.Struct("<IIQQQQQQ"),
    shdr=struct.Struct("<IIQQQQIIQQ"),
)
ELF32 = ElfClass(
    ELFCLASS32,
    ehdr=struct.Struct("<16sHHIIIIIHHHHHH"),
    phdr=struct.Struct("<IIIIIIII"),
    shdr=struct.Struct("<IIIIIIIIII"),
)

ELF_BY_CLASS = {ELFCLASS32: ELF32, ELFCLASS64: ELF64}

NHDR = struct.Struct("<III")


def _pad4(n):
    return (n + 3) & ~3


def note(name, n_type, desc):
    """One note record: Nhdr, name (NUL, padded to 4), desc (padded to 4)."""
    return b"".join(note_parts(name, n_type, desc))


def note_parts(name, n_type, desc):
    """note() as (Nhdr and name, desc itself, padding): written one after the
    other, a large desc is never copied."""
    namesz, padded = _note_name(name)
    return NHDR.pack(namesz, len(desc), n_type) + padded, desc, _ZEROS[-len(desc) & 3]


_ZEROS = (b"", b"\0", b"\0\0", b"\0\0\0")


def note_size(name, desc_len):
    """len(note(name, n_type, desc)) for a desc of desc_len bytes."""
    return NHDR.size + len(_note_name(name)[1]) + _pad4(desc_len)


@functools.cache
def _note_name(name):
    """(namesz, the name's bytes with its NUL and padding): a few names, made once
    (a core of 1000 threads has 4000 notes)."""
    nm = name.encode() + b"\0"
    return len(nm), nm + b"\0" * (_pad4(len(nm)) - len(nm))


def iter_notes(data):
    """Yield (name, type, desc) from a PT_NOTE blob (4-byte alignment)."""
    off = 0
    while off + NHDR.size <= len(data):
        namesz, descsz, ntype = NHDR.unpack_from(data, off)
        off += NHDR.size
        name = data[off : off + namesz].rstrip(b"\0").decode("ascii", "replace")
        off += _pad4(namesz)
        yield name, ntype, data[off : off + descsz]
        off += _pad4(descsz)
