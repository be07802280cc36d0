"""Where a process keeps CPython's _PyRuntime, from its file mappings.

    find_runtime(mappings, opener)  -> Runtime(addr, version, path) or None

``mappings`` are (start, end, file offset in bytes, path) of the process's
file-backed mappings: /proc/PID/maps at capture, NT_FILE when reading a core.
The interpreter is libpythonX.Y.so (a --enable-shared build) or the python
executable itself (a static build); its ELF file on disk names the address:
the ``.PyRuntime`` section (3.11 and later), else the ``_PyRuntime`` symbol.
Only the section headers (and, failing them, a symbol table) are read, and
the answer is cached per file (device, inode, mtime).
"""

import os
import re
import struct
from dataclasses import dataclass

from ..elf.structs import ELF_BY_CLASS, ELFMAG, PT_LOAD

_PY_FILE = re.compile(r"^(?:lib)?python(\d)\.(\d+)")
_CACHE = {}


@dataclass(frozen=True)
class Runtime:
    addr: int  # &_PyRuntime in the process
    version: tuple  # (major, minor) from the file name
    path: str  # the ELF file that holds it


def python_version_of(path):
    """(major, minor) if path's file name is libpythonX.Y... or pythonX.Y..., else None."""
    m = _PY_FILE.match(os.path.basename(path))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _sections(f, elf, ehdr):
    """[(name, sh_type, sh_addr, sh_offset, sh_size, sh_link, sh_entsize)] (empty if none)."""
    shnum, shoff, shentsize = ehdr["e_shnum"], ehdr["e_shoff"], ehdr["e_shentsize"]
    if not shnum or shentsize != elf.shdr.size or shnum > 1 << 16:
        return []
    raw = os.pread(f, shnum * shentsize, shoff)
    if len(raw) < shnum * shentsize:
        return []
    # (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info,
    #  sh_addralign, sh_entsize), in both classes
    shdrs = [elf.shdr.unpack_from(raw, i * shentsize) for i in range(shnum)]
    strndx = ehdr["e_shstrndx"]
    if strndx >= shnum:
        return []
    names = os.pread(f, min(shdrs[strndx][5], 1 << 20), shdrs[strndx][4])
    out = []
    for sh in shdrs:
        end = names.find(b"\0", sh[0])
        name = names[sh[0] : end].decode("ascii", "replace") if end >= sh[0] else ""
        out.append((name, sh[1], sh[3], sh[4], sh[5], sh[6], sh[9]))
    return out


_SYM64 = struct.Struct("<IBBHQQ")  # st_name st_info st_other st_shndx st_value st_size
_SYM32 = struct.Struct("<IIIBBH")  # st_name st_value st_size st_info st_other st_shndx


def _symbol(f, elf, sections, wanted):
    """A symbol's st_value from .dynsym or .symtab, or None."""
    sym = _SYM64 if elf.word_size == 8 else _SYM32
    key = wanted.encode() + b"\0"
    for sec_name in (".dynsym", ".symtab"):
        sec = next((s for s in sections if s[0] == sec_name), None)
        if sec is None or sec[5] >= len(sections) or sec[6] != sym.size:
            continue
        strtab = sections[sec[5]]
        names = os.pread(f, min(strtab[4], 64 << 20), strtab[3])
        data = os.pread(f, min(sec[4], 256 << 20), sec[3])
        at = names.find(b"\0" + key)
        while at >= 0:
            name_off = at + 1
            for entry in sym.iter_unpack(data[: len(data) - len(data) % sym.size]):
                if entry[0] == name_off:
                    return entry[4] if elf.word_size == 8 else entry[1]
            at = names.find(b"\0" + key, at + 1)
    return None


def _elf_facts(path):
    """(runtime vaddr, lowest PT_LOAD vaddr) of an ELF file, or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (path, st.st_dev, st.st_ino, st.st_mtime_ns)
    if key in _CACHE:
        return _CACHE[key]
    facts = None
    try:
        f = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        head = os.pread(f, 64, 0)
        if len(head) >= 52 and head[:4] == ELFMAG and head[4] in ELF_BY_CLASS:
            elf = ELF_BY_CLASS[head[4]]
            ehdr = elf.unpack_ehdr(head)
            raw = os.pread(f, ehdr["e_phnum"] * elf.phdr.size, ehdr["e_phoff"])
            loads = [
                elf.unpack_phdr(raw, i * elf.phdr.size) for i in range(len(raw) // elf.phdr.size)
            ]
            low = min((p.p_vaddr for p in loads if p.p_type == PT_LOAD), default=None)
            sections = _sections(f, elf, ehdr)
            sec = next((s for s in sections if s[0] == ".PyRuntime"), None)
            vaddr = sec[2] if sec else _symbol(f, elf, sections, "_PyRuntime")
            if low is not None and vaddr:
                facts = (vaddr, low)
    except (OSError, struct.error):
        facts = None
    finally:
        os.close(f)
    _CACHE[key] = facts
    return facts


def find_runtime(mappings, opener=None):
    """The Runtime of the interpreter mapped in a process, or None.

    ``opener(path, start, end)`` may name a better file to read than path
    (capture passes /proc/PID/map_files/START-END: the very file mapped,
    even if it was replaced on disk since).
    """
    by_path = {}
    for start, end, offset, path in mappings:
        if python_version_of(path) is None:
            continue
        by_path.setdefault(path, []).append((start, end, offset))
    # libpython first: a python executable linked to it holds no runtime
    order = sorted(by_path, key=lambda p: not os.path.basename(p).startswith("libpython"))
    for path in order:
        maps = sorted(by_path[path])
        first = next((m for m in maps if m[2] == 0), None)
        if first is None:
            continue
        facts = None
        if opener is not None:
            facts = _elf_facts(opener(path, first[0], first[1]))
        if facts is None:
            facts = _elf_facts(path)
        if facts is None:
            continue
        vaddr, low = facts
        bias = first[0] - (low & ~0xFFF)
        return Runtime(addr=bias + vaddr, version=python_version_of(path), path=path)
    return None
