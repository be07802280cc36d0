"""Selection passes over a plan: --mini and --max-size.

Both keep an "essential" set of address ranges and drop the rest of the
dumped bytes, VMA by VMA.  A VMA that keeps only part of its bytes is split
into pieces, one PT_LOAD each: a piece starts at a kept range and its
p_filesz covers that range only, the way the kernel's ELF-header rule gives
a segment p_filesz < p_memsz.  Readers treat the undumped part like any
undumped memory (gdb falls back to the mapped file, then zeros).

    essential_ranges()   stacks, TCBs, ld.so's data, ELF headers, special mappings
    select_mini()        keep only those
    select_max_size()    drop the largest other regions until the core fits
    select()             the pass the request asks for, with the layout that fits
"""

import bisect
import struct
from dataclasses import dataclass, field

from ..elf.layout import CoreLayout
from ..elf.structs import (
    AT_PHDR,
    AT_PHNUM,
    DT_DEBUG,
    DT_NULL,
    ELF32,
    ELF64,
    NT_PRSTATUS,
    PT_DYNAMIC,
    PT_PHDR,
)
from ..errors import CoreTooLarge
from ..procfs import auxv_map
from .plan import NONE

STACK_CAP = 8 << 20  # the most of one thread's stack kept (default RLIMIT_STACK)
RTLD_DATA_CAP = 1 << 20  # a library's data mapping is kept whole up to this size
MAX_LINK_MAPS = 65536


@dataclass
class Dropped:
    """Dumped bytes of one VMA that a selection pass left out."""

    start: int
    end: int
    bytes: int
    why: str

    def to_json(self):
        return {"start": self.start, "end": self.end, "bytes": self.bytes, "why": self.why}


@dataclass
class Selection:
    """What was chosen, for the SNAPCORE note and the result."""

    mode: str = "normal"  # normal | all | mini | max-size
    max_size: int = None
    truncated: bool = False
    dropped: list = field(default_factory=list)  # [Dropped]

    @property
    def bytes_dropped(self):
        return sum(d.bytes for d in self.dropped)


def _merge(ranges):
    out = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if out and lo <= out[-1][1]:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _page_out(lo, hi, page):
    return lo // page * page, (hi + page - 1) // page * page


class _VmaIndex:
    def __init__(self, vmas):
        self.vmas = sorted(vmas, key=lambda v: v.start)
        self.starts = [v.start for v in self.vmas]

    def find(self, addr):
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.vmas[i].end:
            return self.vmas[i]
        return None


def _read_cstring(read, addr, limit=4096):
    data = read(addr, limit)
    if not data:  # may cross into an unmapped page
        data = read(addr, 4096 - addr % 4096)
    n = data.find(b"\0")
    return data if n < 0 else data[: n + 1]


def rtld_ranges(read, auxv, word_size, index):
    """What gdb and elfutils read to list shared libraries, from the live target.

    AT_PHDR -> PT_DYNAMIC -> DT_DEBUG -> r_debug -> the link_map chain (with the
    l_name strings), every namespace (r_debug_extended.r_next); and ld.so's data
    mapping, which holds r_debug and the thread lists libthread_db walks.
    """
    w = struct.Struct("<Q" if word_size == 8 else "<I")
    aux = auxv_map(auxv, word_size)
    phdr, phnum = aux.get(AT_PHDR), aux.get(AT_PHNUM)
    if not phdr or not phnum:
        return []
    elf = ELF64 if word_size == 8 else ELF32
    size = elf.phdr.size
    raw = read(phdr, phnum * size)
    entries = [elf.unpack_phdr(raw, i * size) for i in range(len(raw) // size)]
    entries = [(e.p_type, e.p_vaddr, e.p_memsz) for e in entries]
    bias = 0
    for typ, vaddr, _ in entries:
        if typ == PT_PHDR:
            bias = phdr - vaddr
    ranges = [(phdr, phdr + phnum * size)]
    r_debug = 0
    for typ, vaddr, memsz in entries:
        if typ != PT_DYNAMIC:
            continue
        dyn = bias + vaddr
        ranges.append((dyn, dyn + memsz))
        data = read(dyn, memsz)
        for off in range(0, len(data) - 2 * word_size + 1, 2 * word_size):
            tag, val = w.unpack_from(data, off)[0], w.unpack_from(data, off + word_size)[0]
            if tag == DT_NULL:
                break
            if tag == DT_DEBUG:
                r_debug = val
    seen = set()
    namespaces = 0
    while r_debug and r_debug not in seen and namespaces < 256:
        seen.add(r_debug)
        namespaces += 1
        ranges.append((r_debug, r_debug + 6 * word_size))
        v = index.find(r_debug)
        if v is not None and v.size <= RTLD_DATA_CAP:
            ranges.append((v.start, v.end))
        head = read(r_debug, 6 * word_size)
        if len(head) < 6 * word_size:
            break
        lm = w.unpack_from(head, word_size)[0]
        version = struct.unpack_from("<i", head, 0)[0]
        nodes = 0
        while lm and lm not in seen and nodes < MAX_LINK_MAPS:
            seen.add(lm)
            nodes += 1
            node = read(lm, 5 * word_size)  # l_addr l_name l_ld l_next l_prev
            if len(node) < 5 * word_size:
                break
            ranges.append((lm, lm + 5 * word_size))
            name = w.unpack_from(node, word_size)[0]
            if name:
                ranges.append((name, name + len(_read_cstring(read, name))))
            lm = w.unpack_from(node, 3 * word_size)[0]
        r_debug = w.unpack_from(head, 5 * word_size)[0] if version >= 2 else 0
    return ranges


def essential_ranges(arch, auxv, threads, plans, page_size, read, extra=()):
    """Page-aligned address ranges a backtrace of every thread needs.

    Each thread's stack from just below its stack pointer to the top of that
    mapping (at most STACK_CAP), its thread control block (x86_64: the page
    around fs_base, where glibc's struct pthread lives), the dynamic linker's
    state (rtld_ranges), the kernel's special mappings ([vdso] has the CFI for
    signal frames) and the first page of every dumped file mapping at offset 0
    (ELF headers: build-ids, and the phdrs gdb starts from); and ``extra``:
    what `why` and Python stack readers need (capture/waits.py: futex words,
    poll arrays, the Python runtime, thread states, frames, code objects).
    """
    index = _VmaIndex([p.vma for p in plans if p.first_piece])
    ranges = []
    for t in threads:
        regs = arch.regs(t.regset(NT_PRSTATUS))
        sp = regs[arch.sp_reg]
        v = index.find(max(0, sp - arch.red_zone)) or index.find(sp)
        if v is not None:
            lo = max(v.start, sp - arch.red_zone)
            ranges.append((lo, min(v.end, lo + STACK_CAP)))
        tp = regs.get(arch.thread_pointer_reg) if arch.thread_pointer_reg else None
        if tp:
            ranges.append((tp - page_size, tp + page_size))
    ranges += rtld_ranges(read, auxv, arch.word_size, index)
    ranges += list(extra)
    for p in plans:
        if not p.filesz:
            continue
        if p.vma.special:
            ranges.append((p.start, p.end))
        elif p.has_file and p.vma.offset == 0 and p.first_piece:
            ranges.append((p.start, p.start + page_size))
        if p.has_file and p.why == "written private" and p.filesz <= RTLD_DATA_CAP:
            # .data/.got/RELRO of the executable and libraries: libthread_db
            # reads libc's (__nptl_rtld_global, the thread lists through it)
            ranges.append((p.start, p.start + p.filesz))
    return _merge(_page_out(lo, hi, page_size) for lo, hi in ranges)


def stack_vmas(arch, threads, plans):
    """Start addresses of the VMAs holding a thread's stack pointer."""
    index = _VmaIndex([p.vma for p in plans if p.first_piece])
    out = set()
    for t in threads:
        v = index.find(arch.regs(t.regset(NT_PRSTATUS))[arch.sp_reg])
        if v is not None:
            out.add(v.start)
    return out


def _kept_parts(plan, essential):
    """The parts of plan's dumped bytes inside the essential ranges."""
    lo, hi = plan.start, plan.start + plan.filesz
    i = bisect.bisect_right(essential, (lo, float("inf"))) - 1
    out = []
    for a, b in essential[max(i, 0) :]:
        if a >= hi:
            break
        a, b = max(a, lo), min(b, hi)
        if a < b:
            out.append((a, b))
    return out


def _split(plan, keep, why):
    """plan as pieces: each kept range starts a piece and is its p_filesz."""
    if keep == [(plan.start, plan.start + plan.filesz)]:
        return [plan]
    pieces = []
    if not keep or keep[0][0] > plan.start:
        first_end = keep[0][0] if keep else plan.end
        pieces.append(plan.replace(start=plan.start, end=first_end, filesz=0, fill=NONE, why=why))
    for k, (a, b) in enumerate(keep):
        end = keep[k + 1][0] if k + 1 < len(keep) else plan.end
        pieces.append(plan.replace(start=a, end=end, filesz=b - a))
    return pieces


def select_mini(plans, essential):
    """Keep only the essential bytes (--mini).  Returns (plans, Selection)."""
    sel = Selection(mode="mini")
    out = []
    for p in plans:
        if not p.filesz:
            out.append(p)
            continue
        keep = _kept_parts(p, essential)
        pieces = _split(p, keep, "mini")
        kept = sum(b - a for a, b in keep)
        if kept < p.filesz:
            sel.dropped.append(Dropped(p.vma.start, p.vma.end, p.filesz - kept, "mini"))
        out.extend(pieces)
    return out, sel


def select_max_size(plans, essential, budget, stacks=()):
    """Drop dumped bytes until their sum is at most budget (--max-size).

    The essential ranges stay; of the rest, whole VMAs are dropped largest
    first (anonymous memory, including the written pages of private file
    mappings), and the parts of thread stacks below the stack pointer only
    after everything else; then the smallest dropped ones that fit in the room
    left are given back.  Small regions therefore stay longest.
    Returns (plans, Selection, minimum) where minimum is the sum the essential
    bytes alone need; the caller decides what to do when it exceeds budget.
    """
    sel = Selection(mode="max-size")
    total = sum(p.filesz for p in plans)
    cands = []
    minimum = 0
    for i, p in enumerate(plans):
        if not p.filesz:
            continue
        keep = _kept_parts(p, essential)
        kept = sum(b - a for a, b in keep)
        minimum += kept
        if kept < p.filesz:
            rank = 1 if p.vma.start in stacks else 0
            cands.append((rank, -(p.filesz - kept), i, keep))
    cands.sort()
    dropped = []
    for _rank, neg_saving, i, keep in cands:
        if total <= budget:
            break
        dropped.append((-neg_saving, i, keep))
        total += neg_saving
    # dropping the big ones may have made room: give back the smallest that fit
    for saving, i, keep in sorted(dropped):
        if total + saving <= budget:
            total += saving
            dropped.remove((saving, i, keep))
    replaced = {}
    for saving, i, keep in dropped:
        p = plans[i]
        replaced[i] = _split(p, keep, "max-size")
        sel.dropped.append(Dropped(p.vma.start, p.vma.end, saving, "max-size"))
    sel.truncated = bool(sel.dropped)
    sel.dropped.sort(key=lambda d: d.start)
    out = []
    for i, p in enumerate(plans):
        out.extend(replaced.get(i, [p]))
    return out, sel, minimum


def select(options, plans, arch, read, auxv, threads, notes_for, kernel_notes_len, extra=()):
    """Apply --mini / --max-size to plans; returns (plans, Selection, notes, CoreLayout).

    ``notes_for(selection)`` gives the PT_NOTE contents for a selection, bytes or
    parts (see CoreLayout) (the SNAPCORE record names what was dropped, so the
    notes grow with it);
    ``read(addr, len)`` reads the target's memory; ``extra``: more ranges to
    keep (essential_ranges).
    """
    page = arch.page_size
    if not options.mini and options.max_size is None:
        sel = Selection(mode=options.mode)
        blob = notes_for(sel)
        return plans, sel, blob, CoreLayout(arch, blob, plans)
    essential = essential_ranges(arch, auxv, threads, plans, page, read, extra)
    if options.mini:
        plans, sel = select_mini(plans, essential)
        sel.mode = options.mode
        sel.max_size = options.max_size
        blob = notes_for(sel)
        layout = CoreLayout(arch, blob, plans)
        if options.max_size is not None and layout.file_size > options.max_size:
            raise CoreTooLarge(options.max_size, layout.file_size)
        return plans, sel, blob, layout
    stacks = stack_vmas(arch, threads, plans)
    # the headers grow with the pieces and the dropped list: fit, measure, refit
    overhead = CoreLayout(arch, b"\0" * (kernel_notes_len + 4096), plans).data_off
    for _ in range(8):
        budget = options.max_size - overhead
        fitted, sel, minimum = select_max_size(plans, essential, max(0, budget), stacks)
        sel.mode = options.mode
        sel.max_size = options.max_size
        blob = notes_for(sel)
        layout = CoreLayout(arch, blob, fitted)
        if layout.file_size <= options.max_size:
            return fitted, sel, blob, layout
        headers = layout.file_size - sum(p.filesz for p in fitted)
        if minimum + headers > options.max_size:
            raise CoreTooLarge(options.max_size, minimum + headers)
        overhead += layout.file_size - options.max_size
    raise CoreTooLarge(options.max_size, layout.file_size)
