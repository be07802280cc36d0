"""The GNU build-id of an ELF image, wherever its bytes come from.

    build_id(pread)    pread(offset, length) -> bytes: a file (os.pread on an
                       fd) or a process's memory at the image's load address

Only the program headers are used (what the loader maps: PT_NOTE), never
section headers, so the same code reads a file and a mapped image.  Files
are read by file offset (p_offset), memory by the segment's place in the
first mapping (p_vaddr - the first PT_LOAD's p_vaddr).
"""

import os
import struct

from .structs import ELF_BY_CLASS, ELFMAG, NT_GNU_BUILD_ID, PT_LOAD, PT_NOTE

NHDR = struct.Struct("<III")
MAX_PHNUM = 4096
MAX_NOTES = 1 << 16


def _notes(data, align):
    """(name, type, desc) of a note segment, padded to align (4, or 8 where
    p_align says so, as .note.gnu.property segments are)."""
    align = 8 if align == 8 else 4
    off = 0
    while off + NHDR.size <= len(data):
        namesz, descsz, ntype = NHDR.unpack_from(data, off)
        off += NHDR.size
        name = bytes(data[off : off + namesz]).rstrip(b"\0")
        off += -(-namesz // align) * align
        desc = bytes(data[off : off + descsz])
        off += -(-descsz // align) * align
        yield name, ntype, desc


def build_id(pread, mapped=False):
    """The build-id in hex, or None (not ELF, no build-id note, unreadable).

    mapped: pread reads a loaded image (addresses relative to its start), not a file.
    """
    try:
        head = pread(0, 64)
    except OSError:
        return None
    if len(head) < 52 or head[:4] != ELFMAG or head[4] not in ELF_BY_CLASS:
        return None
    elf = ELF_BY_CLASS[head[4]]
    if len(head) < elf.ehdr.size:
        return None
    ehdr = elf.unpack_ehdr(head)
    phnum, phentsize = ehdr["e_phnum"], ehdr["e_phentsize"]
    if phentsize != elf.phdr.size or not 0 < phnum <= MAX_PHNUM:
        return None
    try:
        table = pread(ehdr["e_phoff"], phnum * phentsize)
    except OSError:
        return None
    phdrs = [
        elf.unpack_phdr(table, i * phentsize)
        for i in range(phnum)
        if (i + 1) * phentsize <= len(table)
    ]
    loads = [p for p in phdrs if p.p_type == PT_LOAD]
    base = min((p.p_vaddr for p in loads), default=0)
    for ph in phdrs:
        if ph.p_type != PT_NOTE or not 0 < ph.p_filesz <= MAX_NOTES:
            continue
        where = ph.p_vaddr - base if mapped else ph.p_offset
        try:
            data = pread(where, ph.p_filesz)
        except OSError:
            continue
        for name, ntype, desc in _notes(data, ph.p_align):
            if ntype == NT_GNU_BUILD_ID and name == b"GNU" and desc:
                return desc.hex()
    return None


def file_build_id(fd):
    """build_id of the ELF file open on fd."""
    return build_id(lambda off, n: os.pread(fd, n, off))
