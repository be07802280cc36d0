"""A small, independent decoder of Linux ELF core files, for comparing cores.

It shares no code with snapcore: structure layouts are written here again
from include/linux/elfcore.h and asm/elfcore-compat.h (64-bit x86_64 and
32-bit ia32), and the program header count honours PN_XNUM.  It reads with
``struct`` rather than pyelftools so that a core with 70000 segments parses
in well under a second.
"""

import mmap
import struct
from dataclasses import dataclass, field

PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF
NT_PRSTATUS, NT_PRFPREG, NT_PRPSINFO, NT_AUXV = 1, 2, 3, 6
NT_X86_XSTATE = 0x202
NT_SIGINFO, NT_FILE = 0x53494749, 0x46494C45
NT_X86_XSAVE_LAYOUT = 0x205

# per ELF class: (ehdr, phdr, shdr, word) struct formats
_CLASS = {
    2: ("<16sHHIQQQIHHHHHH", "<IIQQQQQQ", "<IIQQQQIIQQ", "Q"),
    1: ("<16sHHIIIIIHHHHHH", "<IIIIIIII", "<IIIIIIIIII", "I"),
}

# struct elf_prstatus / compat_elf_prstatus, by name
_PRSTATUS = {
    2: (struct.Struct("<iiiHxxQQiiii8q216si4x"), 27),
    1: (struct.Struct("<iiiHxxIIiiii8i68si"), 17),
}
PRSTATUS_FIELDS = (
    "si_signo",
    "si_code",
    "si_errno",
    "pr_cursig",
    "pr_sigpend",
    "pr_sighold",
    "pr_pid",
    "pr_ppid",
    "pr_pgrp",
    "pr_sid",
    "pr_utime",
    "pr_stime",
    "pr_cutime",
    "pr_cstime",
    "pr_reg",
    "pr_fpvalid",
)

# struct elf_prpsinfo / compat (u32 flag, u16 uid/gid)
_PRPSINFO = {
    2: struct.Struct("<bcbb4xQIIiiii16s80s"),
    1: struct.Struct("<bcbbIHHiiii16s80s"),
}
PRPSINFO_FIELDS = (
    "pr_state",
    "pr_sname",
    "pr_zomb",
    "pr_nice",
    "pr_flag",
    "pr_uid",
    "pr_gid",
    "pr_pid",
    "pr_ppid",
    "pr_pgrp",
    "pr_sid",
    "pr_fname",
    "pr_psargs",
)


@dataclass
class Load:
    vaddr: int
    memsz: int
    filesz: int
    flags: int
    offset: int
    align: int
    paddr: int


@dataclass
class Thread:
    tid: int
    prstatus: dict
    notes: list = field(default_factory=list)  # [(name, type, desc)] after PRSTATUS


class Core:
    """Header, segments and notes of one core file (mapped, read lazily)."""

    def __init__(self, path):
        self.path = str(path)
        self._f = open(self.path, "rb")
        self.size = self._f.seek(0, 2)
        self.map = mmap.mmap(self._f.fileno(), 0, prot=mmap.PROT_READ)
        ident = self.map[:16]
        if ident[:4] != b"\x7fELF":
            raise ValueError(f"{path}: not an ELF file")
        self.elfclass = ident[4]
        ehdr_f, phdr_f, shdr_f, self.word = _CLASS[self.elfclass]
        self.ehdr_struct = struct.Struct(ehdr_f)
        eh = self.ehdr_struct.unpack_from(self.map, 0)
        (
            _,
            self.e_type,
            self.e_machine,
            _,
            _,
            self.e_phoff,
            self.e_shoff,
            _,
            _,
            self.e_phentsize,
            self.e_phnum,
            self.e_shentsize,
            self.e_shnum,
            _,
        ) = eh
        phnum = self.e_phnum
        self.shdr0 = None
        if phnum == PN_XNUM:
            sh = struct.unpack_from(shdr_f, self.map, self.e_shoff)
            self.shdr0 = sh
            phnum = sh[7]  # sh_info
        self.phnum = phnum
        ph = struct.Struct(phdr_f)
        self.phdrs = []
        for i in range(phnum):
            v = ph.unpack_from(self.map, self.e_phoff + i * ph.size)
            if self.elfclass == 2:
                p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align = v
            else:
                p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align = v
            self.phdrs.append(
                (p_type, Load(p_vaddr, p_memsz, p_filesz, p_flags, p_offset, p_align, p_paddr))
            )
        self.loads = [ld for t, ld in self.phdrs if t == PT_LOAD]
        notes = [ld for t, ld in self.phdrs if t == PT_NOTE]
        self.note_phdr = notes[0] if notes else None
        self.notes = (
            _parse_notes(
                self.map[self.note_phdr.offset : self.note_phdr.offset + self.note_phdr.filesz]
            )
            if self.note_phdr
            else []
        )
        self._split_threads()

    def close(self):
        self.map.close()
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- notes ------------------------------------------------------------
    def _split_threads(self):
        st, nregs = _PRSTATUS[self.elfclass]
        self.threads = []
        self.process = {}  # type -> desc of the once-per-process notes
        for name, ntype, desc in self.notes:
            if name == "CORE" and ntype == NT_PRSTATUS:
                if len(desc) != st.size:
                    raise ValueError(f"NT_PRSTATUS of {len(desc)} bytes")
                vals = st.unpack(desc)
                pr = dict(zip(PRSTATUS_FIELDS[:10], vals[:10]))
                times = vals[10:18]
                for i, k in enumerate(("pr_utime", "pr_stime", "pr_cutime", "pr_cstime")):
                    pr[k] = (times[2 * i], times[2 * i + 1])
                pr["pr_reg"] = vals[18]
                pr["pr_fpvalid"] = vals[19]
                self.threads.append(Thread(pr["pr_pid"], pr))
            elif (
                ntype in (NT_PRPSINFO, NT_SIGINFO, NT_AUXV, NT_FILE)
                and name == "CORE"
                or ntype == NT_X86_XSAVE_LAYOUT
            ):
                self.process[ntype] = desc
            elif name not in ("CORE", "LINUX"):
                self.process[(name, ntype)] = desc  # e.g. snapcore's SNAPCORE note
            elif self.threads:
                self.threads[-1].notes.append((name, ntype, desc))

    def note_offsets(self):
        """[(owner, type, file offset of the name, file offset of the desc)] per note."""
        out, off = [], self.note_phdr.offset
        end = off + self.note_phdr.filesz
        while off + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", self.map, off)
            name = self.map[off + 12 : off + 12 + namesz].rstrip(b"\0").decode("ascii", "replace")
            desc = off + 12 + ((namesz + 3) & ~3)
            out.append((name, ntype, off + 12, desc))
            off = desc + ((descsz + 3) & ~3)
        return out

    def nonzero_padding(self):
        """Padding that is not zero: [(file offset, byte)] in the notes' padding, and
        between the end of the notes and the first PT_LOAD's data (the kernel pads
        with zeros, and so must a core that claims to be the kernel's)."""
        ph = self.note_phdr
        pad = []
        _parse_notes(self.map[ph.offset : ph.offset + ph.filesz], pad)
        bad = [(ph.offset + o, b) for o, b in pad if b]
        start = ph.offset + ph.filesz
        end = min((ld.offset for ld in self.loads), default=start)
        gap = self.map[start:end]
        if gap.count(0) != len(gap):
            bad += [(start + i, b) for i, b in enumerate(gap) if b]
        return bad

    def prpsinfo(self):
        desc = self.process[NT_PRPSINFO]
        return dict(zip(PRPSINFO_FIELDS, _PRPSINFO[self.elfclass].unpack(desc)))

    def regs(self, thread):
        """The thread's pr_reg as a tuple of words."""
        n = len(thread.prstatus["pr_reg"]) // (8 if self.word == "Q" else 4)
        fmt = f"<{n}{self.word}"
        return struct.unpack(fmt, thread.prstatus["pr_reg"])

    def file_note(self):
        """(page_size, [(start, end, pgoff, name bytes)]) from NT_FILE."""
        desc = self.process[NT_FILE]
        w = struct.Struct("<" + self.word)
        count = w.unpack_from(desc, 0)[0]
        page_size = w.unpack_from(desc, w.size)[0]
        entries = []
        off = 2 * w.size
        for _ in range(count):
            entries.append(struct.unpack_from("<3" + self.word, desc, off))
            off += 3 * w.size
        names = desc[off:].split(b"\0")
        if desc[-1:] != b"\0" or len(names) != count + 1:
            raise ValueError("NT_FILE names are not NUL-terminated strings, one per entry")
        return page_size, [(*e, n) for e, n in zip(entries, names)]

    def auxv(self):
        w = struct.Struct("<2" + self.word)
        desc = self.process[NT_AUXV]
        return [w.unpack_from(desc, o) for o in range(0, len(desc), w.size)]

    # -- memory -----------------------------------------------------------
    def load_bytes(self, ld):
        return self.map[ld.offset : ld.offset + ld.filesz]

    def load_at(self, addr):
        for ld in self.loads:
            if ld.vaddr <= addr < ld.vaddr + ld.memsz:
                return ld
        raise KeyError(f"{addr:#x} is in no PT_LOAD")

    def read(self, addr, length):
        """Bytes at addr as a reader that zero-fills past p_filesz sees them."""
        ld = self.load_at(addr)
        if addr + length > ld.vaddr + ld.memsz:
            raise KeyError(f"[{addr:#x}, +{length:#x}) crosses the end of its PT_LOAD")
        rel = addr - ld.vaddr
        avail = max(0, min(length, ld.filesz - rel))
        data = self.map[ld.offset + rel : ld.offset + rel + avail]
        return data + b"\0" * (length - avail)


def _parse_notes(blob, padding=None):
    """[(owner, type, desc)]; with a list as ``padding``, also every padding byte
    (name and desc rounded up to 4) as (offset in the blob, byte) pairs."""
    out, off = [], 0
    while off + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from("<III", blob, off)
        off += 12
        name = blob[off : off + namesz].rstrip(b"\0").decode("ascii", "replace")
        if padding is not None:
            end = off + ((namesz + 3) & ~3)
            padding += [(o, blob[o]) for o in range(off + namesz, end)]
        off += (namesz + 3) & ~3
        out.append((name, ntype, bytes(blob[off : off + descsz])))
        if padding is not None:
            end = off + ((descsz + 3) & ~3)
            padding += [(o, blob[o]) for o in range(off + descsz, end)]
        off += (descsz + 3) & ~3
    if off != len(blob):
        raise ValueError(f"notes end at {off}, PT_NOTE holds {len(blob)} bytes")
    return out
